"""The recipe's command line: fail fast in one line (exit 2, nothing trained), --help, epochs, configs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_jtln.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _load_recipe():
    spec = importlib.util.spec_from_file_location("train_jtln_cli", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


@pytest.fixture
def no_training(monkeypatch):
    """Any training stage makes the test fail: every error below must come before the first step."""
    from jtln_hf import methods

    monkeypatch.setattr(methods.stages, "_train", lambda *a, **k: pytest.fail("a training stage ran"))


def _fails(capsys, tmp_path, *argv: str) -> str:
    out = tmp_path / "out"
    status = recipe.main([*argv, "--output_dir", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2, err[-2000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]  # one line (beside progress bars), no traceback
    assert not out.exists()  # nothing written: no stage ran
    return errors[0]


CASES = {
    "cost typo": (["--cost", "featurs-ot"], r"--cost 'featurs-ot' is neither .* \(did you mean 'features-ot'\?\)"),
    "mode typo": (["--mode", "jtnl"], r"--mode 'jtnl' is not one of .* \(did you mean 'jtln'\?\)"),
    "method typo": (["--methods", "joint", "finetun"], r"--methods 'finetun' .* \(did you mean 'finetune'\?\)"),
    "flag typo": (["--lerning_rate", "0.1"], r"unrecognized argument --lerning_rate \(did you mean --learning_rate\?\)"),
    "class case": (["--target_classes", "shirt", "Coat"], r"unknown class 'shirt' \(did you mean 'Shirt'\?\)"),
    "class overlap": (["--source_classes", "Shirt", "Trouser"], r"in both the source and the target list"),
    "too many shots": (["--shots", "7000"], r"has 6000 images but 7000 shots were asked: lower --shots"),
    "ignored OT flag": (["--mode", "joint", "--ot_epsilon", "0.1"], r"--ot_epsilon has no effect: no method"),
    "refresh of a fixed cost": (["--mode", "jtln", "--cost_refresh_steps", "100"],
                                r"--cost_refresh_steps is only used by features-ot / .* / relationship costs and --cost "
                                r"is prior"),
    "negative refresh": (["--cost_refresh_steps", "-1"], r"--cost_refresh_steps must be >= 0 \(0: no refresh\)"),
    "methods without compare": (["--mode", "jtln", "--methods", "jtln"], r"--methods chooses what --mode compare"),
    "one side only": (["--source_dataset", "fashion-mnist"], r"need both --source_dataset and --target_dataset"),
    "steps and epochs": (["--max_steps", "5", "--num_train_epochs", "2"], r"--max_steps and --num_train_epochs"),
    "checkpoint missing": (["--backbone_checkpoint", "nope.safetensors"], r"--backbone_checkpoint nope.safetensors: "
                                                                         r"no such file"),
    "backbone typo": (["--backbone", "resnet5O"], r"did you mean 'resnet50'"),
    "bad value": (["--max_steps", "many"], r"argument --max_steps/--max-steps: invalid int value: 'many'"),
    "bad epsilon": (["--ot_epsilon", "0"], r"ot_epsilon must be > 0 and finite, got 0.0: e.g. 0.05 \(JTLN's default\)"),
    "shuffle without OT": (["--mode", "joint", "--cost_shuffle_seed", "1"],
                           r"--cost_shuffle_seed has no effect: no method of this run \(joint\) reads it"),
    "shuffle a constant cost": (["--mode", "jtln", "--cost", "constant", "--cost_shuffle_seed", "1"],
                                r"--cost constant relates no class to another: drop --cost_shuffle_seed"),
    "negative shuffle seed": (["--mode", "jtln", "--cost_shuffle_seed", "-1"], r"--cost_shuffle_seed must be >= 0"),
    "shuffle one target class": (["--mode", "jtln", "--cost", "relationship", "--target_classes", "Shirt",
                                  "--cost_shuffle_seed", "1"], r"and this run has one target class: drop"),
    "ViT patch size": (["--backbone", "test_vit"], r"--backbone test_vit cuts images into 16x16 patches and the input "
                                                   r"is 28 px \(read from the data\): pass --image_size 32"),
    "ViT image size": (["--backbone", "test_vit", "--image_size", "40"], r"input is 40 px \(--image_size\): pass "
                                                                         r"--image_size 48 \(a multiple of 16\)"),
    "LoRA rank": (["--lora_rank", "0"], r"--lora_rank must be >= 1, got 0"),
    "LoRA without rank": (["--lora_dropout", "0.1"], r"--lora_dropout sets up LoRA adapters, which --lora_rank R"),
    "LoRA targets": (["--lora_rank", "2", "--lora_target_modules", "qkv"],
                     r"--lora_target_modules qkv name no nn.Linear or nn.Conv2d of backbone 'test_resnet'"),
    "LoRA family": (["--backbone", "test_efficientnet", "--lora_rank", "2"],
                    r"--lora_rank: no default layers for backbone 'test_efficientnet' \(EfficientNet\): pass "
                    r"--lora_target_modules"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fail_fast_on_the_embedded_default(case, capsys, tmp_path, no_training):
    argv, pattern = CASES[case]
    assert re.search(pattern, _fails(capsys, tmp_path, *argv)), case


def test_fail_fast_on_two_datasets(capsys, tmp_path, digits_folder, no_training):
    two = ["--source_dataset", "fashion-mnist", "--target_dataset", str(digits_folder)]
    assert "no column 'labl'" in _fails(capsys, tmp_path, *two, "--target_label_column", "labl")
    message = _fails(capsys, tmp_path, *two, "--target_test_split", "validation")
    assert "has no such split (splits: ['test', 'train'])" in message and "--target_test_fraction" in message
    assert "did you mean '3'" not in _fails(capsys, tmp_path, *two, "--target_classes", "three")
    assert "--train_split applies to --dataset; with --source_dataset" in _fails(
        capsys, tmp_path, *two, "--train_split", "train")  # fmt: skip
    bad = tmp_path / "cost.npy"
    np.save(bad, np.ones((3, 3)))
    message = _fails(capsys, tmp_path, *two, "--cost", str(bad))
    assert "shape" in message and "(10, 10)" in message
    assert "does not fit these classes" in _fails(capsys, tmp_path, *two, "--cost", "prior")


def test_a_cost_file_no_shuffle_can_change_fails_before_training(capsys, tmp_path, no_training):
    """4 of the 5 target columns of this C are equal: no permutation gives each of them other values."""
    cost = tmp_path / "cost.npy"
    np.save(cost, np.array([[0.0, 0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, 0.0]] * 2 + [[0.5] * 5]))
    message = _fails(capsys, tmp_path, "--mode", "jtln", "--cost", str(cost), "--cost_shuffle_seed", "2")
    assert re.search(r"--cost_shuffle_seed 2: no permutation of C's 5 target columns .* columns \[0, 1, 2, 3\] are "
                     r"equal and need 4 other columns .* and C has 1", message), message


def test_config_errors_are_one_line_too(capsys, tmp_path, no_training):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rte: 0.1\n")
    assert "unknown key(s) ['learning_rte'] (did you mean --learning_rate?)" in _fails(
        capsys, tmp_path, "--config", str(config))  # fmt: skip
    assert "no such file" in _fails(capsys, tmp_path, "--config", str(tmp_path / "missing.yaml"))


def test_debug_shows_the_traceback(tmp_path, no_training):
    with pytest.raises(ValueError, match="did you mean 'features-ot'"):
        recipe.main(["--cost", "featurs-ot", "--debug", "--output_dir", str(tmp_path / "o")])


def test_offline_pretrained_without_cache_exits_2_in_one_line(tmp_path):
    """The real command: exit 2, one stderr line naming --backbone_checkpoint and the cache, no stage run."""
    env = {**ENV, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run(
        [sys.executable, str(RECIPE), "--backbone", "resnet18", "--pretrained_backbone", "--output_dir",
         str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: --pretrained_backbone:") and "--backbone_checkpoint" in lines[0]
    assert str(tmp_path / "empty-cache") in lines[0] and not (tmp_path / "out").exists()


def test_help_leads_with_the_description_examples_and_jtln_flags():
    text = recipe.build_parser().format_help()
    assert text.splitlines()[2].startswith("Train JTLN and compare it with plain fine-tuning")  # after a short usage
    assert "examples:" in text and "--target_dataset path/to/my_photos" in text and "--config" in text
    flags = ("--source_dataset", "--backbone_checkpoint", "--cost_warmup_steps", "--ot_epsilon", "--learning_rate")
    order = [re.search(rf"^  {flag} ", text, re.MULTILINE).start() for flag in flags]  # each flag's help entry
    assert order == sorted(order)  # data, model, JTLN, the objective, then the Trainer's flags


def test_help_lists_methods_and_costs_registered_before_the_parser_is_built(request, tmp_path):
    """--help is built from the registries at call time: a user's late registrations are listed and accepted."""
    from jtln_hf.cost.builders import COST_BUILDERS, register_cost
    from jtln_hf.utils.styles import METHOD_STYLES
    from jtln_hf.methods import METHOD_REGISTRY, register_method

    def forget():
        METHOD_REGISTRY.pop("mine", None)
        METHOD_STYLES.pop("mine", None)
        COST_BUILDERS.pop("diagonal", None)

    request.addfinalizer(forget)
    before = " ".join(recipe.build_parser().format_help().split())
    assert "mine" not in before and "diagonal" not in before
    register_method("mine", "my method", "mine", "tab:olive")(lambda run: None)
    register_cost("diagonal", "0 on the diagonal, 1 elsewhere", normalized=False)(lambda inputs: None)
    parser = recipe.build_parser()
    helps = {action.dest: " ".join((action.help or "").split()) for action in parser._actions}
    assert "mine, compare}" in helps["mode"] and "cotuning, mine}" in helps["methods"]
    assert "diagonal: 0 on the diagonal, 1 elsewhere" in helps["cost"]
    text = " ".join(parser.format_help().split())
    assert "diagonal: 0 on the diagonal" in text and "mine, compare}" in text
    data, model, jtln, *_ = recipe.parse_args(["--mode", "mine", "--cost", "diagonal", "--output_dir", str(tmp_path)])
    assert jtln.run_methods == ["mine"] and jtln.cost == "diagonal"


def test_epochs_replace_the_default_steps_only_when_given(tmp_path):
    parsed = recipe.parse_args(["--num_train_epochs", "2", "--output_dir", str(tmp_path)])
    training, given = parsed[3], parsed[4]
    assert training.max_steps == -1 and training.num_train_epochs == 2 and "num_train_epochs" in given
    training = recipe.parse_args(["--output_dir", str(tmp_path)])[3]
    assert training.max_steps == 500  # the recipe's default
    config = tmp_path / "c.yaml"
    config.write_text("num_train_epochs: 3\n")
    assert recipe.parse_args(["--config", str(config)])[3].max_steps == -1


def test_given_flags_come_from_the_command_line_and_the_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("shots: 3\n")
    given = recipe.parse_args(["--config", str(config), "--ot_epsilon", "0.1", "--ot_detach_target"])[4]
    assert {"shots", "ot_epsilon", "ot_detach_target", "config"} <= given and "max_steps" not in given


@pytest.mark.parametrize("name", ["fashion_mnist.yaml", "fgvc_aircraft_boeing.yaml", "fgvc_aircraft_airbus.yaml"])
def test_shipped_configs_parse_and_pass_the_cross_checks(name):
    from jtln_hf.experiment.checks import check_arguments

    path = REPO / "recipes" / "configs" / name
    data, model, jtln, training, given, _ = recipe.parse_args(["--config", str(path), "--bf16", "false"])  # CPU
    check_arguments(data, model, jtln, given)
    loaded = yaml.safe_load(path.read_text())
    assert all(key in given for key in loaded)


def test_workers_default_to_the_cpus_unless_given(tmp_path, monkeypatch):
    """Without --dataloader_num_workers the recipe asks default_num_workers (prefetching, not persistent workers);
    a flag on the command line or in --config is kept as given, and settings.json records neither."""
    from jtln_hf.experiment import cli
    from jtln_hf.experiment.arguments import run_settings

    monkeypatch.setattr(cli, "default_num_workers", lambda: 3)
    help_text = " ".join(recipe.build_parser().format_help().split())
    assert "loads in the training process), with 2 batches prefetched each; the batches do not depend on it. " \
           "(default: 3)" in help_text  # --help states the default a run here uses, not TrainingArguments' 0
    data, model, jtln, training, given, _ = recipe.parse_args(["--output_dir", str(tmp_path)])
    assert (training.dataloader_num_workers, training.dataloader_persistent_workers,
            training.dataloader_prefetch_factor) == (3, False, 2)  # fmt: skip
    assert "dataloader_num_workers" not in run_settings(data, model, jtln, training)
    training = recipe.parse_args(["--dataloader_num_workers", "0", "--output_dir", str(tmp_path)])[3]
    assert (training.dataloader_num_workers, training.dataloader_persistent_workers) == (0, False)
    training = recipe.parse_args(["--dataloader_persistent_workers", "true", "--output_dir", str(tmp_path)])[3]
    assert (training.dataloader_num_workers, training.dataloader_persistent_workers) == (3, True)
    config = tmp_path / "c.yaml"
    config.write_text("dataloader_num_workers: 1\n")
    assert recipe.parse_args(["--config", str(config)])[3].dataloader_num_workers == 1
