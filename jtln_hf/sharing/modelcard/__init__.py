"""The model card of a trained JTLN model: ``README.md`` and its figures, ready for the Hub.

``huggingface_hub.ModelCard.from_template`` fills the Jinja template ``model_card_template.md``
and writes the YAML metadata block (library, tags, datasets, metrics with their values as
``model-index``, base model, license); :mod:`jtln_hf.sharing.figures` draws the PNGs the card shows
(cost matrix, mean transport plan, comparison). This module gathers what the card says.

Used by :func:`jtln_hf.sharing.folder.save_model` (the recipe's ``model/`` folder) and by
:meth:`jtln_hf.training.trainer.JTLNTrainer.create_model_card` (what ``Trainer.push_to_hub`` publishes).
"""

from __future__ import annotations

from . import facts, render
from .facts import *  # noqa: F403 (the names of facts.__all__)
from .render import *  # noqa: F403 (the names of render.__all__)

__all__ = [*facts.__all__, *render.__all__]
