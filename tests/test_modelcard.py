"""The model card: metadata, content, figures, the mean transport plan, and the Trainer's card.

References: the mean plan is checked against ``jtln_hf.sinkhorn.transport_plan`` applied image by image
and against its marginals; the card's metadata is read back with ``huggingface_hub.ModelCard.load``.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import matplotlib.text
from matplotlib.backends.backend_agg import FigureCanvasAgg

import numpy as np
import pytest
import torch
from conftest import SOURCE_NAMES, TARGET_NAMES, make_args, make_model, make_trainer
from huggingface_hub import HfApi, ModelCard, RepoUrl
from PIL import Image

import jtln_hf
from jtln_hf.sharing import figures, modelcard
from jtln_hf.experiment.arguments import DataArguments, JTLNArguments, ModelArguments, method_settings
from jtln_hf.methods import METHOD_REGISTRY, RunResult
from jtln_hf.sharing.modelcard import (
    COMPARE_FIGURE,
    COST_FIGURE,
    NORMALIZATION_TEXT,
    PAPER_URL,
    PLAN_FIGURE,
    TEACHER_MIN_RATIO,
    TOP_K_MAX_CHANCE,
    default_model_name,
    package_reference,
    render_model_card,
    reported_metrics,
    strongest_teachers,
    top_k_of,
    training_hyperparameters,
    write_model_card,
)
from jtln_hf.experiment.results import summarize, write_results
from jtln_hf.sharing.folder import save_model
from jtln_hf.sinkhorn import mean_transport_plan, transport_plan

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
    fig = figures.compare_figure(SUMMARY, "joint")
    diff, acc = fig.axes
    assert [t.get_text().split("\n")[0] for t in diff.get_xticklabels()] == ["target only", "consecutive", "JTLN"]
    assert [t.get_text() for t in acc.get_xticklabels()] == ["target only", "consecutive", "joint (no OT)", "JTLN"]
    # JTLN - joint = +2.5, +2.0, +1.5 points: 2.0 ± t_{0.975,2} 0.5 / sqrt(3) = 2.0 ± 4.3027 * 0.2887 = [0.76, 3.24]
    assert diff.get_xticklabels()[-1].get_text() == "JTLN\n+2.0 [+0.8, +3.2]\nwon 3/3"
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
        tmp_path, model, plan=plan, plan_images=200, summary=SUMMARY, baseline="joint",
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
    # Sandal: Pullover 0.133 >= 1.5 x 0.0833; the other columns are ties
    assert "Sandal ← Pullover (0.133 vs 0.0833)" in text and "over 200 target test images" in text
    assert "Bag: none stands out (T-shirt/top 0.0833, Trouser 0.0833, Pullover 0.0833)" in text
    assert "Bag ←" not in text and "at least\n1.5 times the next source class's" in text
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
    assert "**JTLN**, the Joint Transfer Learning Network" in card.text  # trained with OT: JTLN by default
    # what trained the model and the plan are values the caller passes (no plan here: the card says nothing of one)
    trainer.create_model_card(method="cotuning", transport_plan=(None, None))
    text = (tmp_path / "out" / "README.md").read_text()
    assert "**Co-Tuning (joint + soft source labels)**, one of the baselines" in text
    assert "over 100 target test images" not in text


# ------------------------------------------------------------------ the card says only what the run did
PROJECT_ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"https?://[^\s)\]>\"'`]+")
LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")


def declared_urls(*hub_ids: str | None) -> set[str]:
    """What a card may link to: the paper, pyproject.toml's [project.urls], and Hub repositories the run named."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    return {PAPER_URL, *project.get("urls", {}).values(), *(f"https://huggingface.co/{i}" for i in hub_ids if i)}


def undeclared_links(card_text: str, folder: Path, declared: set[str]) -> list[str]:
    """Every URL of the card not in ``declared``, and every relative link target not a file in ``folder``."""
    bad = [url for url in URL.findall(card_text) if url not in declared]
    for target in LINK_TARGET.findall(card_text):
        if not URL.fullmatch(target) and not (folder / target).is_file():
            bad.append(target)
    return bad


def _runs(methods, seeds, model, steps):
    """RunResults of a comparison (no training); the first seed's JTLN run keeps ``model``, as run_experiment does."""
    runs = []
    for seed in seeds:
        for i, method in enumerate(methods):
            acc = 0.6 + 0.03 * i + 0.01 * (seed % 3)
            metrics = {"accuracy": acc, "mean_per_class_accuracy": acc - 0.004, "top_3_accuracy": 0.97, "loss": 0.9}
            runs.append(RunResult(method, seed, metrics, 3.0, model if (method, seed) == ("jtln", seeds[0]) else None,
                                  "Hand-written prior relation between the classes (prior.csv); normalisation: column.",
                                  steps[method]))  # fmt: skip
    return runs


TWO = {"joint": "4", "jtln": "4"}
FIVE = {"finetune": "4", "consecutive": "4 source + 4 target", "joint": "4", "jtln": "4", "cotuning": "3 warm-up + 4"}


@pytest.mark.parametrize(("steps", "seeds", "hub_model_id"), [
    (TWO, [5, 6, 7], None), (TWO, [5, 6, 7], "tester/jtln-two"), (FIVE, [0, 1], None)])  # fmt: skip
def test_card_states_what_the_run_did(tmp_path, steps, seeds, hub_model_id):
    """The card of a comparison, checked statement by statement against results.json and the run's settings."""
    methods = list(steps)
    model = _card_model()
    runs = _runs(methods, seeds, model, steps)
    summary = summarize(runs)
    table = write_results(tmp_path, summary, runs, {"seeds": seeds}, "Caption.")
    args = make_args(tmp_path, hub_model_id=hub_model_id, max_steps=4)
    data_args, jtln_args = DataArguments(), JTLNArguments(methods=methods, seeds=seeds)
    (kept,) = [r for r in runs if r.model is not None]
    settings = method_settings(data_args, ModelArguments(), jtln_args)  # what the plan resolves
    folder = save_model(kept, tmp_path, args, settings, table, summary=summary)
    results = json.loads((tmp_path / "results.json").read_text())
    card = ModelCard.load(folder / "README.md")
    text = card.text

    # the name and the loading examples: --hub_model_id, else a placeholder built from method, backbone, data
    name = hub_model_id.split("/")[-1] if hub_model_id else default_model_name("jtln", "test_resnet", "fashion-mnist")
    assert name == (hub_model_id or "x/jtln-test-resnet-fashion-mnist").split("/")[-1]
    assert card.data.model_name == name and card.data.to_dict()["model-index"][0]["name"] == name
    assert text.startswith(f"\n# {name}\n") and Path(tmp_path).name not in text
    repo = hub_model_id or f"your-name/{name}"
    assert f'pipeline("image-classification", model="{repo}", trust_remote_code=True)' in text
    assert (f"`{repo}` below is a placeholder" in text) == (hub_model_id is None)

    # metrics: the kept run's, from results.json; top-3 of 4 classes (chance 75 %) left out, with the rule
    (row,) = [r for r in results["runs"] if (r["method"], r["seed"]) == ("jtln", seeds[0])]
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {k: round(row[k], 4) for k in ("accuracy", "mean_per_class_accuracy")}
    assert f"| Accuracy | {100 * row['accuracy']:.2f} % |" in text and "| Top-3 accuracy |" not in text
    assert "Top-3 accuracy is not reported: guessing 3 of the 4 target classes at random scores 75 %" in text
    assert "at most 10 %" in text

    # the comparison: the methods that ran, their seeds, their budgets (the table's column), which run this is
    titles = [METHOD_REGISTRY[m].title for m in results["summary"]]
    assert f"Target test accuracy of the {len(titles)} methods this run compared ({'; '.join(titles)})" in text
    assert f"on the same data and seeds ({', '.join(map(str, results['seeds']))})." in text
    budgets = {entry["steps"] for entry in results["summary"].values()}
    for method, entry in results["summary"].items():
        assert f"| {METHOD_REGISTRY[method].title} |" in text and f"| {entry['steps']} | {len(entry['seeds'])} |" in text
    if len(budgets) == 1:
        assert f"Every method trained the same budget per seed ({budgets.pop()} steps)." in text
    else:
        assert 'Their training budgets differ: the "steps per seed" column gives each method\'s.' in text
        assert "same budget" not in text and "step budget" not in text
    assert "four methods" not in text and "paper's table" not in text
    assert f"This checkpoint is the run of JTLN (joint + OT) on seed {seeds[0]}." in text
    assert "| method | JTLN (joint + OT) |" in text and f"| seed | {seeds[0]} |" in text

    # the Hub widget: not promised for this repository; the timm export (written by default) is named
    assert "widget see" not in text
    assert (folder / "timm" / "config.json").is_file() and "folder `timm/` of this repository" in text
    assert "do not run this repository (it needs `trust_remote_code`)" in text

    # links: only the paper, the project's declared addresses and Hub repositories the run named; figures on disk
    assert "github.com" not in text
    assert not undeclared_links(text, folder, declared_urls(hub_model_id, card.data.base_model))
    assert f"using {package_reference()}" in text


def test_package_is_linked_only_to_a_declared_address(monkeypatch):
    model = _card_model()
    monkeypatch.setattr(modelcard.facts, "project_urls", lambda: {})
    text = render_model_card(model).text
    assert f"using jtln_hf {jtln_hf.__version__}." in text and "[jtln_hf](" not in text
    urls = {"Documentation": "https://docs.example", "Source": "https://src.example/jtln"}
    monkeypatch.setattr(modelcard.facts, "project_urls", lambda: urls)
    assert f"using [jtln_hf](https://src.example/jtln) {jtln_hf.__version__}." in render_model_card(model).text


def test_the_widget_sentence_follows_the_timm_export(tmp_path):
    model = _card_model()
    none = render_model_card(model, repo_id="tester/jtln").text
    assert "do not run this one" in none and "timm.create_model" not in none
    folder = render_model_card(model, repo_id="tester/jtln", timm_export="local-dir:timm").text
    assert "folder `timm/` of this repository" in folder and 'timm.create_model("local-dir:timm", pretrained=True)' in folder
    assert "without\n`trust_remote_code`" in folder and "uploaded as a repository of\nits own" in folder
    hub = render_model_card(model, repo_id="tester/jtln", timm_export="hf-hub:tester/jtln-timm").text
    assert "[tester/jtln-timm](https://huggingface.co/tester/jtln-timm)" in hub
    assert "the Hub's inference widget and hosted inference run it" in hub
    for text, named in ((none, None), (folder, None), (hub, "tester/jtln-timm")):
        assert not undeclared_links(text, tmp_path, declared_urls("tester/jtln", named))


def test_a_strongest_teacher_is_named_only_when_it_stands_out():
    # the Bag column: 0.063 vs 0.060 vs 0.058 is a near-tie; Sandal's 0.12 is 2.4 times the next
    plan = np.array([[0.12, 0.058, 0.02, 0.02], [0.05, 0.060, 0.025, 0.01], [0.01, 0.063, 0.0, 0.09]])
    found = {t["target"]: t for t in strongest_teachers(plan, SOURCE_NAMES, TARGET_NAMES)}
    assert found["Sandal"]["teacher"] == "T-shirt/top" and found["Bag"]["teacher"] is None
    assert found["Ankle boot"]["teacher"] is None  # 0.025 vs 0.02: 1.25 times, not 1.5
    assert found["Coat"]["teacher"] == "Pullover" and TEACHER_MIN_RATIO == 1.5
    assert [s for s, _ in found["Bag"]["ranked"]] == ["Pullover", "Trouser", "T-shirt/top"]
    text = render_model_card(_card_model(), plan=plan, figures={"plan": PLAN_FIGURE}).text
    assert "Sandal ← T-shirt/top (0.12 vs 0.05)" in text and "Coat ← Pullover (0.09 vs 0.02)" in text
    assert "Bag: none stands out (Pullover 0.063, Trouser 0.06, T-shirt/top 0.058)" in text and "Bag ←" not in text


def test_a_teacher_at_exactly_the_ratio_stands_out():
    plan = np.array([[0.03], [0.02]])
    assert strongest_teachers(plan, SOURCE_NAMES[:2], TARGET_NAMES[:1])[0]["teacher"] == "T-shirt/top"  # 1.5 x
    plan = np.array([[0.0299], [0.02]])
    assert strongest_teachers(plan, SOURCE_NAMES[:2], TARGET_NAMES[:1])[0]["teacher"] is None


def test_the_card_says_what_the_column_normalisation_did(tmp_path):
    model = make_model(num_target=4, num_source=3)
    # after the column shift, Bag costs 0 from T-shirt/top and Pullover alike
    model.set_cost_matrix(torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.9, 0.3, 0.0, 0.2], [0.4, 0.0, 0.7, 0.0]]))
    card = write_model_card(tmp_path, model, cost_description="Prior; normalisation: column.",
                            cost_normalization="column")  # fmt: skip
    text = card.text
    assert NORMALIZATION_TEXT["column"].split(". ")[0] in text.replace("\n", " ")
    assert "In the Bag column, T-shirt/top, Pullover share the lowest cost: C does not single out one of them." in text
    assert not [t for t in ("Sandal", "Ankle boot", "Coat") if f"In the {t} column" in text]  # one lowest cost each
    assert "![Cost matrix C (column normalisation)" in text
    title = figures.cost_figure(model.cost_matrix.numpy(), SOURCE_NAMES, TARGET_NAMES, "column").axes[0].get_title()
    assert title.splitlines() == ["Cost matrix C (low = cheap to move mass)",
                                  "column normalisation: rescaled to [0, 1], each column shifted to min 0"]
    assert "teaches" not in title and "teaches" not in text


@pytest.mark.parametrize(("num_labels", "shown"), [
    (5, []), (10, ["top_1_accuracy"]), (100, ["top_1_accuracy", "top_4_accuracy", "top_5_accuracy"])])  # fmt: skip
def test_top_k_is_reported_only_well_above_chance(num_labels, shown):
    metrics = {"accuracy": 0.8, "top_1_accuracy": 0.8, "top_4_accuracy": 0.99, "top_5_accuracy": 0.99}
    reported, left_out = reported_metrics(metrics, num_labels)
    assert [k for k in reported if k.startswith("top_")] == shown and "accuracy" in reported
    assert set(reported) | set(left_out) == set(metrics)
    assert all(top_k_of(k) / num_labels <= TOP_K_MAX_CHANCE for k in reported if top_k_of(k))


def test_compare_png_is_readable_at_the_cards_width(tmp_path):
    """Five methods: at most ~1000 px wide, so shown 800 px wide the smallest text keeps >= 12 px."""
    summary = {**SUMMARY, "cotuning": SUMMARY["jtln"]}
    path = figures.plot_compare(summary, tmp_path / COMPARE_FIGURE, "joint")
    with Image.open(path) as image:
        width = image.width
    fig = figures.compare_figure(summary, "joint")
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]
    smallest_px_at_800 = min(sizes) * 150 / 72 * 800 / width
    assert width <= 1000 and smallest_px_at_800 >= 12, (width, min(sizes))
    renderer = FigureCanvasAgg(fig).get_renderer()  # no two tick labels of a panel overlap
    fig.draw(renderer)
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), ax.get_title()
