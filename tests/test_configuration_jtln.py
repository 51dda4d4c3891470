"""Tests for JointImageClassifierConfig: JSON round trip, inferred fields, errors, AutoConfig."""

from __future__ import annotations

import json

import pytest
from conftest import make_config
from transformers import AutoConfig

import jtln_hf  # noqa: F401  (registers model_type "jtln")
from jtln_hf import JointImageClassifierConfig
from jtln_hf.data import FASHION_MNIST_DATA_CONFIG


def test_round_trip_restores_every_field(tmp_path):
    config = make_config(num_target=4, head_dropout=0.25, ot_note="kept")
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "jtln"
    # JSON has only string keys: that is what from_pretrained must undo.
    assert set(raw["source_id2label"]) == {"0", "1", "2"}

    loaded = JointImageClassifierConfig.from_pretrained(tmp_path)
    assert loaded.source_id2label == {0: "T-shirt/top", 1: "Trouser", 2: "Pullover"}
    assert all(isinstance(k, int) for k in loaded.source_id2label)
    assert loaded.id2label == {0: "Sandal", 1: "Bag", 2: "Ankle boot", 3: "Coat"}
    assert loaded.label2id == {"Sandal": 0, "Bag": 1, "Ankle boot": 2, "Coat": 3}
    assert loaded.source_label2id == {"T-shirt/top": 0, "Trouser": 1, "Pullover": 2}
    assert loaded.num_source_labels == 3 and loaded.num_labels == 4
    assert loaded.backbone == "test_resnet"
    assert loaded.backbone_kwargs == {"in_chans": 1}
    assert loaded.head_dropout == 0.25  # exact: the value, through JSON
    assert loaded.pretrained_backbone is False
    assert loaded.data_config == FASHION_MNIST_DATA_CONFIG
    assert loaded.ot_note == "kept"
    # a second round trip is a fixed point
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == raw


def test_label2id_filled_from_id2label():
    config = JointImageClassifierConfig(source_id2label={0: "a"}, id2label={0: "x", 1: "y", 2: "z"})
    assert config.label2id == {"x": 0, "y": 1, "z": 2}
    assert config.num_labels == 3


def test_num_source_labels_inferred_and_generated():
    assert JointImageClassifierConfig(source_id2label={0: "a", 1: "b"}).num_source_labels == 2
    # string keys (as read from JSON) become ints
    assert JointImageClassifierConfig(source_id2label={"0": "a", "1": "b"}).source_id2label == {0: "a", 1: "b"}
    config = JointImageClassifierConfig(num_source_labels=3)
    assert config.source_id2label == {0: "SOURCE_0", 1: "SOURCE_1", 2: "SOURCE_2"}
    # agreeing values are fine
    assert JointImageClassifierConfig(num_source_labels=2, source_id2label={0: "a", 1: "b"}).num_source_labels == 2


def test_num_source_labels_mismatch_raises():
    with pytest.raises(ValueError, match=r"num_source_labels=3 but source_id2label names 2 classes"):
        JointImageClassifierConfig(num_source_labels=3, source_id2label={0: "a", 1: "b"})


@pytest.mark.parametrize("kwargs,match", [
    ({"num_source_labels": 0}, "num_source_labels must be >= 1"),
    ({"num_source_labels": 2, "head_dropout": 1.0}, "head_dropout must be in"),
    ({"num_source_labels": 2, "head_dropout": -0.1}, "head_dropout must be in"),
])
def test_invalid_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointImageClassifierConfig(**kwargs)


def test_auto_config_resolves_jtln(tiny_config, tmp_path):
    config = AutoConfig.for_model("jtln", source_id2label={0: "a", 1: "b"})
    assert type(config) is JointImageClassifierConfig
    tiny_config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is JointImageClassifierConfig
    drop_path = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert drop_path(loaded.to_dict()) == drop_path(tiny_config.to_dict())
    assert loaded.source_id2label == {0: "T-shirt/top", 1: "Trouser", 2: "Pullover"}
    assert loaded.num_source_labels == 3 and loaded.num_labels == 4
