"""Sharing a trained model: the Hub-ready folder and its push, the model card, the timm export and the demo.

* :mod:`~jtln_hf.sharing.hub` -- the Hub-ready folder of a model and :func:`push_model_folder`, with clear errors;
* :mod:`~jtln_hf.sharing.folder` -- the recipe's ``model/`` folder: weights, code, card, figures, demo, timm export;
* :mod:`~jtln_hf.sharing.modelcard` and :mod:`~jtln_hf.sharing.figures` -- the card and the PNGs it shows;
* :mod:`~jtln_hf.sharing.timm_export` -- the target network as a plain timm model;
* :mod:`~jtln_hf.sharing.demo` (and the app it copies, :mod:`~jtln_hf.sharing.demo_app`) -- the Gradio demo and Space.

Nothing is imported here: each module pulls in only what it needs (the card draws with matplotlib).
"""
