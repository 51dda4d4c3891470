"""End to end: the recipe's command line on real Fashion-MNIST, then the saved model in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_jtln.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_recipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RECIPE), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


def run_recipe_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The recipe's ``main()`` in this process (no start-up of torch in another one), its stdout captured.

    For the end-to-end runs whose outputs the tests read; the command line itself is
    :func:`test_bad_flags_fail_with_clear_errors`'s, and the saved model is loaded in a fresh process."""
    import contextlib
    import io

    from test_recipe_cli import recipe

    stdout = io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(stdout):
        status = recipe.main(list(args))
    return subprocess.CompletedProcess(["recipes/train_jtln.py", *args], status, stdout.getvalue(), "")


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """A short compare run of all five methods on 2 seeds, from a YAML config plus overriding flags.

    Plumbing, not accuracy: 4 steps of 16 images, a 2-step warm-up for Co-Tuning (its default is 200
    source-only steps), 100 test images."""
    out = tmp_path_factory.mktemp("compare")
    config = out / "quick.yaml"
    config.write_text(yaml.safe_dump({"max_steps": 5, "shots": 3, "max_eval_samples": 100, "seeds": [0, 3],
                                      "per_device_train_batch_size": 16, "cost_warmup_steps": 2}))  # fmt: skip
    proc = run_recipe_here("--config", str(config), "--max_steps", "4", "--output_dir", str(out / "run"), cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "run", proc


def test_compare_writes_table_and_json(compare_run):
    run_dir, proc = compare_run
    results = json.loads((run_dir / "results.json").read_text())
    # the flag overrode the YAML (4 steps, not 5); the YAML overrode the defaults (3 shots, seeds 0 3)
    assert results["max_steps"] == 4 and results["shots"] == 3 and results["seeds"] == [0, 3]
    assert results["source_classes"] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Sneaker"]
    assert results["target_classes"] == ["Shirt", "Coat", "Sandal", "Bag", "Ankle boot"]
    assert set(results["summary"]) == {"finetune", "consecutive", "joint", "jtln", "cotuning"}
    assert len(results["runs"]) == 10
    for method, entry in results["summary"].items():
        per_seed = entry["accuracy"]["per_seed"]
        assert len(per_seed) == 2 and all(0.0 <= a <= 1.0 for a in per_seed)
        assert entry["accuracy"]["mean"] == pytest.approx(sum(per_seed) / 2)
        assert entry["accuracy"]["std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
    table = (run_dir / "results.md").read_text()
    assert "| JTLN (joint + OT) |" in table and "consecutive fine-tuning" in table
    assert table.strip().splitlines()[-1] in proc.stdout  # the table is printed too
    # no temporary files are left behind by the atomic writers
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def fresh_reloads(compare_run, two_dataset_run) -> dict[str, dict]:
    """Both saved models loaded in one fresh interpreter (one start-up of torch, not one per model), through
    ``import jtln_hf`` and the Auto classes, each in a function of its own: what each prints, by run."""
    model_dir, run_dir = compare_run[0] / "model", two_dataset_run[0]
    image = next((run_dir.parent / "digits" / "test" / "7").iterdir())
    code = f"""
import json, numpy as np
from PIL import Image
from jtln_hf.data.fashion_mnist import FASHION_MNIST_PRIOR_PATH
from jtln_hf.cost import load_cost, normalize_cost
from transformers import AutoModelForImageClassification
import jtln_hf

def compare():
    m = AutoModelForImageClassification.from_pretrained({str(model_dir)!r})
    names = [m.config.source_id2label[i] for i in range(5)], [m.config.id2label[i] for i in range(5)]
    expected = normalize_cost(load_cost(FASHION_MNIST_PRIOR_PATH, *names), "column")
    return {{"cls": type(m).__name__, "cost_ok": bool(np.allclose(m.cost_matrix.numpy(), expected)),
            "targets": names[1]}}

def two_datasets():
    m = AutoModelForImageClassification.from_pretrained({str(run_dir / "model")!r})
    image = Image.open({str(image)!r})
    target, source = m.predict(image), m.predict_source([image, image.convert("RGB")])
    return {{"targets": [m.config.id2label[i] for i in range(10)],
            "sources": [m.config.source_id2label[i] for i in range(10)],
            "label": target.labels[0], "source_labels": source.labels,
            "probability_sum": float(target.probabilities.sum())}}

print(json.dumps({{"compare": compare(), "two_datasets": two_datasets()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_saved_model_and_card_reload_in_fresh_process(compare_run, fresh_reloads):
    run_dir, _ = compare_run
    model_dir = run_dir / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    card = (model_dir / "README.md").read_text()
    assert card.startswith("---") and "jtln" in card and "optimal-transport" in card
    assert "Ankle boot" in card and "T-shirt/top" in card and "normalisation: column" in card
    info = fresh_reloads["compare"]
    assert info == {"cls": "JointImageClassifier", "cost_ok": True,
                    "targets": ["Shirt", "Coat", "Sandal", "Bag", "Ankle boot"]}  # fmt: skip


def test_bad_flags_fail_with_clear_errors(tmp_path, capsys):
    """The real command line: exit status 2 and one ``error:`` line (every case: tests/test_recipe_cli.py);
    one start-up of the recipe is enough for that, the other cases run its ``main()`` here."""
    proc = run_recipe("--mode", "nope", "--output_dir", str(tmp_path / "x"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --mode 'nope' is not one of")
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()
    from test_recipe_cli import _fails

    bad = tmp_path / "bad.yaml"
    bad.write_text("not_a_flag: 3\n")
    assert "unknown key(s) ['not_a_flag']" in _fails(capsys, tmp_path, "--config", str(bad))
    assert "in both the source and the target list" in _fails(capsys, tmp_path, "--source_classes", "Shirt", "Trouser",
                                                              "--max_steps", "1")  # fmt: skip


@pytest.fixture(scope="module")
def two_dataset_run(tmp_path_factory):
    """Fashion-MNIST (all 10 classes) as source, scikit-learn's digits (an ImageFolder) as target."""
    from conftest import write_digits_folder

    out = tmp_path_factory.mktemp("two")
    digits = write_digits_folder(out / "digits")
    proc = run_recipe_here(
        "--source_dataset", "fashion-mnist", "--target_dataset", str(digits), "--mode", "compare", "--seeds", "0",
        "--shots", "2", "--max_steps", "4", "--per_device_train_batch_size", "16", "--cost_warmup_steps", "2",
        "--cost_samples_per_class", "10", "--max_eval_samples", "100", "--output_dir", str(out / "run"), cwd=out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "run", proc


def test_two_datasets_end_to_end(two_dataset_run):
    run_dir, proc = two_dataset_run
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["summary"]) == {"finetune", "consecutive", "joint", "jtln", "cotuning"}
    assert results["source_classes"] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                         "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
    assert results["target_classes"] == [str(d) for d in range(10)]
    assert results["input_size"] == [1, 28, 28] and results["cost"] == "features-mmd"  # read from the data
    assert results["test_images"] == 100 and results["source_dataset"] == "fashion-mnist"
    # what transformers' examples write, per stage; no empty folders
    stages = {p.name for p in (run_dir / "runs").iterdir()}
    assert stages == {"finetune-seed0", "consecutive-seed0-source", "consecutive-seed0-target", "joint-seed0",
                      "jtln-seed0-warmup", "jtln-seed0", "cotuning-seed0-warmup", "cotuning-seed0"}  # fmt: skip
    for stage in stages:
        files = {p.name for p in (run_dir / "runs" / stage).iterdir()}
        assert {"train_results.json", "all_results.json", "trainer_state.json"} <= files, stage
        state = json.loads((run_dir / "runs" / stage / "trainer_state.json").read_text())
        assert state["log_history"] and state["global_step"] in (2, 4)
    evaluated = json.loads((run_dir / "runs" / "jtln-seed0" / "eval_results.json").read_text())
    assert evaluated["eval_accuracy"] == pytest.approx(results["summary"]["jtln"]["accuracy"]["mean"])
    # the card cites the Hub id of Fashion-MNIST, never a local path
    card = (run_dir / "model" / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["datasets"] == ["zalando-datasets/fashion_mnist"] and str(run_dir.parent) not in card
    assert metadata["model-index"][0]["results"][0]["dataset"]["type"] == "digits"


def test_two_dataset_model_reloads_in_a_fresh_process(fresh_reloads):
    info = fresh_reloads["two_datasets"]
    assert info["targets"] == [str(d) for d in range(10)] and info["sources"][0] == "T-shirt/top"
    assert info["label"] in info["targets"] and len(info["source_labels"]) == 2
    assert info["source_labels"][0] == info["source_labels"][1]  # an L image and its RGB copy: the same pixels
    assert info["probability_sum"] == pytest.approx(1.0, abs=1e-5)
