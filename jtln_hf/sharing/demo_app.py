#!/usr/bin/env python
"""Gradio demo of a JTLN model: upload an image, see what both heads say and how OT links them.

For one image: the target classes with their probabilities (the target head), the source classes
the source head sees in it ("looks like"), and the image's entropic transport plan between the two
heads' predictions under the model's cost matrix C, with training's settings (demo.json): which
source classes teach which target class on this image. The plan is drawn with jtln_hf.sharing.figures.

Runs from the model folder, offline:  python app.py [--host 127.0.0.1] [--port 7860]
(the model beside this file; needs jtln_hf with its demo extra: pip install 'jtln_hf[demo]').
As a Hugging Face Space, demo.json names the model repository and the pinned revision to load.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's flags (read before gradio and torch are imported: ``--help`` answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None, help="Address to serve on (Gradio's default: 127.0.0.1).")
    parser.add_argument("--port", type=int, default=None, help="Port (Gradio's default: 7860 or the next free one).")
    parser.add_argument("--model", default=None, help="Model folder or repository id (default: demo.json, else here).")
    parser.add_argument("--revision", default=None, help="Revision of --model.")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from jtln_hf import JointImageClassifier, JointImageClassifierImageProcessor  # noqa: E402
from jtln_hf.sharing.figures import heatmap  # noqa: E402
from jtln_hf.sinkhorn import transport_plan  # noqa: E402

HERE = Path(__file__).resolve().parent
SETTINGS = json.loads((HERE / "demo.json").read_text())


def load(source: str | None = None, revision: str | None = None):
    """The model and its image processor: demo.json's repository at its revision, else this folder."""
    source = source or SETTINGS.get("model_id") or str(HERE)
    revision = revision or SETTINGS.get("revision")
    model = JointImageClassifier.from_pretrained(source, revision=revision).eval()
    processor = JointImageClassifierImageProcessor.from_pretrained(source, revision=revision)
    return model, processor


def explain(model, processor, image, top: int = 5) -> dict:
    """Both heads' probabilities on ``image`` and its transport plan (rows source, columns target classes)."""
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    target = model.predict(pixel_values)
    source = model.predict_source(pixel_values)
    ot = SETTINGS["ot"]
    plan = transport_plan(source.probabilities, target.probabilities, model.cost_matrix.detach().cpu().float(),
                          epsilon=ot["epsilon"], iterations=ot["iterations"], method=ot["method"], tol=ot["tol"])[0]
    config = model.config
    return {
        "label": target.labels[0],
        "target": {config.id2label[i]: float(p) for i, p in enumerate(target.probabilities[0])},
        "source": {config.source_id2label[i]: float(p) for i, p in enumerate(source.probabilities[0])},
        "plan": plan.double().numpy(),
    }


def plan_figure(model, plan):
    """The plan as the card's heatmap (jtln_hf.sharing.figures.heatmap)."""
    config = model.config
    source = [config.source_id2label[i] for i in range(config.num_source_labels)]
    target = [config.id2label[i] for i in range(config.num_labels)]
    return heatmap(plan, source, target, title="Transport plan on this image (which source classes teach which "
                   "target class)", colorbar_label="transported mass γ[source, target]", cmap="magma", fmt=".3f")


def build(model, processor) -> gr.Blocks:
    """The demo page: an image in; target classes, source classes, the plan and the top class out."""
    config = model.config

    def run(image):
        if image is None:
            return None, None, None, ""
        result = explain(model, processor, image)
        return result["target"], result["source"], plan_figure(model, result["plan"]), result["label"]

    with gr.Blocks(title="JTLN demo") as demo:
        gr.Markdown(
            f"# JTLN: {config.num_labels} target classes, taught by {config.num_source_labels} source classes\n"
            "Upload an image: the target head's classes, the source classes the source head sees in it, and the "
            "image's optimal-transport plan between the two under the model's cost matrix."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", elem_id="image", height=280)
                examples = [str(HERE / name) for name in SETTINGS.get("examples", []) if (HERE / name).is_file()]
                if examples:
                    gr.Examples(examples, inputs=image)
                prediction = gr.Textbox(label="Predicted target class", elem_id="prediction", interactive=False)
            with gr.Column():
                target = gr.Label(num_top_classes=config.num_labels, label="Target classes", elem_id="target")
                source = gr.Label(num_top_classes=config.num_source_labels, label="Looks like (source classes)",
                                  elem_id="source")
        plan = gr.Plot(label="Transport plan on this image", elem_id="plan")
        image.change(run, inputs=image, outputs=[target, source, plan, prediction])
    return demo


def theme() -> gr.themes.Base:
    """Gradio's default theme with system fonts: no web fonts to fetch, so the page also renders offline."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


#: Small images (28x28 Fashion-MNIST) shown at the panel's size, pixels kept sharp.
CSS = "#image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


def main(args: argparse.Namespace | None = None) -> None:
    """Load the model and serve the demo (``args``: :func:`parse_args`'s, read from the command line if None)."""
    args = args if args is not None else parse_args()
    model, processor = load(args.model, args.revision)
    build(model, processor).launch(server_name=args.host, server_port=args.port, theme=theme(), css=CSS)


if __name__ == "__main__":
    main(ARGS)
