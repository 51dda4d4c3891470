"""Configuration of the JTLN joint image classifier.

This file imports only transformers (and the standard library) so that ``save_pretrained`` can copy
it beside the weights and a Hub user can load the checkpoint with ``trust_remote_code=True``
without installing jtln_hf (the class is registered with ``register_for_auto_class``, so the saved
``config.json`` carries an ``auto_map``).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class JointImageClassifierConfig(PretrainedConfig):
    r"""
    Configuration of a [`JointImageClassifier`]: one timm backbone shared by a source head and a
    target head (Lu, Chen & Saidi, "Optimal Transport for Deep Joint Transfer Learning", 2017).

    The target task follows the transformers convention (`num_labels`, `id2label`, `label2id`), so
    pipelines and metrics see an ordinary image classifier; the source task has its own fields.

    Args:
        backbone (`str`, *optional*, defaults to `"resnet18"`):
            timm architecture name, passed to `timm.create_model`.
        backbone_kwargs (`dict[str, Any]`, *optional*):
            Extra keyword arguments for `timm.create_model`, e.g. `{"in_chans": 1}`.
        num_source_labels (`int`, *optional*):
            Number of source classes L_s. Inferred from `source_id2label` when not given.
        source_id2label (`dict[int, str]`, *optional*):
            Names of the source classes.
        head_dropout (`float`, *optional*, defaults to 0.0):
            Dropout applied to the pooled features before both heads.
        pretrained_backbone (`bool`, *optional*, defaults to `False`):
            Ask timm for its pretrained weights when a *fresh* model is built. `from_pretrained`
            never downloads backbone weights: the checkpoint holds them.
        data_config (`dict[str, Any]`, *optional*):
            timm data config (`input_size`, `interpolation`, `mean`, `std`, `crop_pct`, `crop_mode`)
            used to build transforms. Resolved from the backbone when a model is first built, then
            saved with the checkpoint so inference preprocesses exactly as training did.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the two heads (the backbone keeps
            timm's own initialisation or pretrained weights).

    Example:
    ```python
    >>> from jtln_hf import JointImageClassifierConfig, JointImageClassifier
    >>> config = JointImageClassifierConfig(
    ...     backbone="test_resnet", backbone_kwargs={"in_chans": 1},
    ...     source_id2label={0: "T-shirt/top", 1: "Trouser"}, id2label={0: "Shirt", 1: "Coat", 2: "Bag"})
    >>> model = JointImageClassifier(config)
    ```
    """

    model_type = "jtln"
    # Trainer.evaluate collects every output field except these as predictions: keep only `logits`.
    keys_to_ignore_at_inference = ["source_logits", "pooler_output", "hidden_states"]

    backbone: str = "resnet18"
    backbone_kwargs: dict[str, Any] | None = None
    num_source_labels: int | None = None
    source_id2label: dict[int, str] | dict[str, str] | None = None
    head_dropout: float = 0.0
    pretrained_backbone: bool = False
    data_config: dict[str, Any] | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        if self.source_id2label is not None:
            # JSON turns integer keys into strings: turn them back, as transformers does for id2label.
            self.source_id2label = {int(k): v for k, v in self.source_id2label.items()}
            if self.num_source_labels is None:
                self.num_source_labels = len(self.source_id2label)
            elif self.num_source_labels != len(self.source_id2label):
                raise ValueError(
                    f"num_source_labels={self.num_source_labels} but source_id2label names "
                    f"{len(self.source_id2label)} classes: pass one of them, or make them agree."
                )
        elif self.num_source_labels is not None:
            self.source_id2label = {i: f"SOURCE_{i}" for i in range(self.num_source_labels)}
        if self.num_source_labels is not None and self.num_source_labels < 1:
            raise ValueError(f"num_source_labels must be >= 1, got {self.num_source_labels}.")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}.")
        super().__post_init__(**kwargs)
        if self.id2label is not None and not self.label2id:
            self.label2id = {name: idx for idx, name in self.id2label.items()}

    @property
    def source_label2id(self) -> dict[str, int]:
        """Inverse of `source_id2label`."""
        return {v: k for k, v in (self.source_id2label or {}).items()}


def check_cost_matrix(cost, num_source_labels: int | None = None, num_target_labels: int | None = None) -> None:
    """Raise a ``ValueError`` naming the problem and the fix when ``cost`` is not a valid ground cost C.

    The one check of a cost matrix, used by the model (`set_cost_matrix`), the loss, the OT solver
    and `jtln_hf.cost`. A valid C is a 2-D tensor of finite, non-negative entries with at least one
    row and column, of shape ``(num_source_labels, num_target_labels)`` (rows = source classes,
    columns = target classes) when those are given. It lives here because this file travels with
    every checkpoint (remote code), so the model can run it without jtln_hf installed.
    """
    import torch

    cost = torch.as_tensor(cost).detach()
    expected = (num_source_labels, num_target_labels)
    if None not in expected and tuple(cost.shape) != expected:
        raise ValueError(
            f"cost matrix has shape {tuple(cost.shape)} but the model has L_s={expected[0]} source "
            f"and L_t={expected[1]} target classes: build it with rows = source classes and "
            f"columns = target classes, shape {expected}."
        )
    if cost.dim() != 2 or cost.numel() == 0:
        raise ValueError(
            f"cost must be a 2-D (L_s, L_t) matrix with at least one row and one column, got shape {tuple(cost.shape)}."
        )
    bad = ~torch.isfinite(cost)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"cost matrix has a non-finite entry at (source {i}, target {j}) = {cost[i, j].item()}: "
            "every entry must be a finite number; replace missing pairs by a large finite cost."
        )
    if (cost < 0).any():
        i, j = (int(v) for v in (cost < 0).nonzero()[0])
        raise ValueError(
            f"cost matrix has a negative entry at (source {i}, target {j}) = {cost[i, j].item():g}: "
            "optimal-transport costs must be >= 0; shift it (e.g. jtln_hf.cost.normalize_cost)."
        )


# `save_pretrained` writes `auto_map` and copies this file: `AutoConfig` then loads the checkpoint
# with `trust_remote_code=True` where jtln_hf is not installed.
JointImageClassifierConfig.register_for_auto_class()
