"""The model card: metadata, content, figures, the mean transport plan, and the Trainer's card.

References: the mean plan is checked against ``jtln_hf.ot.transport_plan`` applied image by image
and against its marginals; the card's metadata is read back with ``huggingface_hub.ModelCard.load``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SOURCE_NAMES, TARGET_NAMES, make_args, make_model, make_trainer
from huggingface_hub import HfApi, ModelCard, RepoUrl
from PIL import Image

from jtln_hf import figures
from jtln_hf.modelcard import (
    COMPARE_FIGURE,
    COST_FIGURE,
    PLAN_FIGURE,
    mean_transport_plan,
    training_hyperparameters,
    write_model_card,
)
from jtln_hf.ot import transport_plan

SUMMARY = {
    method: {"seeds": [0, 1, 2],
             "accuracy": {"mean": acc, "std": std, "per_seed": [acc - std, acc, acc + std]},
             "mean_per_class_accuracy": {"mean": acc - 0.01, "std": std,
                                         "per_seed": [acc - 0.01 - std, acc - 0.01, acc - 0.01 + std]}}
    for method, acc, std in (("finetune", 0.61, 0.02), ("consecutive", 0.66, 0.01),
                             ("joint", 0.70, 0.015), ("jtln", 0.72, 0.01))
}  # fmt: skip


def test_mean_transport_plan_is_the_average_of_the_plans():
    g = torch.Generator().manual_seed(0)
    source_logits, logits = torch.randn(7, 3, generator=g), torch.randn(7, 2, generator=g)
    cost = torch.rand(3, 2, generator=g)
    plan = mean_transport_plan(source_logits, logits, cost, epsilon=0.1, iterations=200, batch_size=3)
    a, b = source_logits.softmax(-1), logits.softmax(-1)
    expected = torch.stack([transport_plan(a[i : i + 1], b[i : i + 1], cost, epsilon=0.1, iterations=200)[0]
                            for i in range(7)]).double().mean(0)  # fmt: skip
    np.testing.assert_allclose(plan, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert plan.shape == (3, 2) and plan.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(plan.sum(1), a.mean(0).numpy(), atol=1e-4)  # rows: mean source probabilities
    np.testing.assert_allclose(plan.sum(0), b.mean(0).numpy(), atol=1e-5)  # columns: mean target probabilities
    with pytest.raises(ValueError, match="as many source as target predictions"):
        mean_transport_plan(source_logits[:3], logits, cost, epsilon=0.1, iterations=10)


def test_heatmap_has_class_names_and_a_labelled_colour_bar():
    fig = figures.heatmap(np.arange(6.0).reshape(3, 2), SOURCE_NAMES, TARGET_NAMES[:2],
                          title="C", colorbar_label="cost C[source, target]")  # fmt: skip
    heat, bar = fig.axes
    assert [t.get_text() for t in heat.get_yticklabels()] == list(SOURCE_NAMES)
    assert [t.get_text() for t in heat.get_xticklabels()] == list(TARGET_NAMES[:2])
    assert bar.get_ylabel() == "cost C[source, target]"
    assert sorted(t.get_text() for t in heat.texts) == sorted(f"{v:.2f}" for v in range(6))
    with pytest.raises(ValueError, match="2 row and 2 column labels"):
        figures.heatmap(np.zeros((3, 2)), SOURCE_NAMES[:2], TARGET_NAMES[:2], title="", colorbar_label="")


def test_compare_figure_shows_paired_differences_and_accuracy():
    fig = figures.compare_figure(SUMMARY)
    diff, acc = fig.axes
    assert [t.get_text().split("\n")[0] for t in diff.get_xticklabels()] == ["target only", "consecutive", "JTLN"]
    assert [t.get_text() for t in acc.get_xticklabels()] == ["target only", "consecutive", "joint (no OT)", "JTLN"]
    # JTLN - joint = +2.5, +2.0, +1.5 points: 2.0 ± t_{0.975,2} 0.5 / sqrt(3) = 2.0 ± 4.3027 * 0.2887 = [0.76, 3.24]
    assert diff.get_xticklabels()[-1].get_text() == "JTLN\n+2.0 [+0.8, +3.2], 3/3"
    assert acc.get_ylabel() == "target test accuracy (%)" and acc.get_ylim()[0] > 50  # not from 0 %


def _card_model():
    model = make_model(num_target=4, num_source=3)
    model.set_cost_matrix(torch.tensor([[0.0, 0.8, 0.5, 1.0], [0.9, 0.0, 0.7, 0.2], [0.4, 1.0, 0.0, 0.6]]))
    return model


def test_card_metadata_content_and_figures(tmp_path):
    model = _card_model()
    plan = np.full((3, 4), 1 / 12)
    plan[2, 0] += 0.05
    plan[0, 0] -= 0.05
    args = make_args_for_card(tmp_path)
    write_model_card(
        tmp_path, model, plan=plan, plan_images=200, summary=SUMMARY,
        repo_id="tester/jtln-tiny", cost_description="Hand-written prior; normalisation: column.",
        hyperparameters=training_hyperparameters(args), results_table="| method | accuracy |\n|---|---|\n| JTLN | 72 |",
        metrics={"accuracy": 0.7234, "mean_per_class_accuracy": 0.7012}, datasets=["fashion_mnist"],
        dataset_name="Fashion-MNIST test split",
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert {"jtln", "optimal-transport"} <= set(data.tags)
    assert data.datasets == ["fashion_mnist"] and data.pipeline_tag == "image-classification"
    assert data.to_dict()["backbone"] == "test_resnet"
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {"accuracy": 0.7234, "mean_per_class_accuracy": 0.7012}
    assert data.eval_results[0].dataset_name == "Fashion-MNIST test split"
    assert "model-index" in card.content.split("---")[1]

    text = card.text
    assert "arXiv:1709.02995" in text and "Optimal Transport for Deep Joint Transfer Learning" in text
    assert "Sandal, Bag, Ankle boot, Coat" in text and "T-shirt/top, Trouser, Pullover" in text
    assert "Hand-written prior; normalisation: column." in text
    assert "| source \\ target | Sandal | Bag | Ankle boot | Coat |" in text
    assert "| Pullover | 0.40 | 1.00 | 0.00 | 0.60 |" in text
    for row in ("| λ_s (source_loss_weight) | 1.0 |", "| λ_ot (ot_loss_weight) | 0.5 |", "| ε (ot_epsilon) | 0.1 |",
                "| Sinkhorn iterations (ot_iterations) | 30 |", "| steps | 7 |",
                "| Sinkhorn stopping tolerance (ot_tol) | none (fixed iterations) |",
                "| batch (per device) | 8 = 2 source + 6 target images |", "| source fraction (ratio) | 0.25 |"):
        assert row in text, row
    assert "| Accuracy | 72.34 % |" in text and "| JTLN | 72 |" in text
    assert "Sandal ← Pullover" in text and "over 200 target test images" in text
    assert 'pipeline("image-classification", model="tester/jtln-tiny", trust_remote_code=True)' in text
    assert "model.predict_source(pixel_values)" in text
    for name in (COST_FIGURE, PLAN_FIGURE, COMPARE_FIGURE):  # referenced and on disk, as real PNGs
        assert re.search(rf"!\[[^\]]+\]\({re.escape(name)}\)", text), name
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_card_of_a_model_without_ot(tmp_path):
    model = make_model(num_target=2, cost=torch.zeros(3, 2))
    write_model_card(tmp_path, model, repo_id="tester/joint", cost_description="", hyperparameters={})
    text = (tmp_path / "README.md").read_text()
    assert "trained without the OT term" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no figures to draw


def make_args_for_card(tmp_path):
    return make_args(tmp_path / "args", per_device_train_batch_size=8, source_fraction=0.25, max_steps=7,
                     ot_loss_weight=0.5, ot_epsilon=0.1, ot_iterations=30)  # fmt: skip


def test_trainer_push_to_hub_publishes_the_jtln_card(small_split, tmp_path, monkeypatch):
    """Trainer.push_to_hub -> create_model_card (ours) -> upload_folder(output_dir): check what it uploads."""
    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        uploads.append({"repo_id": repo_id, "files": files, "card": (folder / "README.md").read_text()})
        return "https://huggingface.co/tester/trainer-card/commit/1"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = make_model(num_target=2)
    trainer = make_trainer(model, small_split["joint"], tmp_path / "out", eval_dataset=small_split["test"],
                           max_steps=2, hub_model_id="tester/trainer-card", ot_loss_weight=1.0)  # fmt: skip
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub(dataset="fashion_mnist")
    (upload,) = uploads
    assert upload["repo_id"] == "tester/trainer-card"
    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", "modeling_jtln.py",
                 "configuration_jtln.py", "image_processing_jtln.py", COST_FIGURE, PLAN_FIGURE):  # fmt: skip
        assert name in upload["files"], name
    card = ModelCard(upload["card"])
    assert {"jtln", "optimal-transport"} <= set(card.data.tags)
    assert card.data.datasets == ["fashion_mnist"]
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "mean_per_class_accuracy"}
    assert "over 100 target test images" in card.text and "| steps | 2 |" in card.text
    assert "This model is a fine-tuned version" not in card.text  # not transformers' generic card
