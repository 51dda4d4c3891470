"""The JTLN joint image classifier: one timm backbone, a source head (``source_logits``) and a target head
(``logits``); the OT objective is ``jtln_hf.training.loss``. Remote code: imports only torch, timm, transformers and the
other two model files. Lu, Chen & Saidi, "Optimal Transport for Deep Joint Transfer Learning", arXiv:1709.02995.
"""

from __future__ import annotations

import contextvars
import json
import os
from dataclasses import dataclass

import timm
import torch
from safetensors import safe_open
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput, cached_file

from .configuration_jtln import JointImageClassifierConfig, check_cost_matrix

#: PIL's RGB -> "L" conversion (ITU-R 601-2 luma in 16-bit fixed point: L = (19595 R + 38470 G + 7471 B
#: + 2**15) >> 16). The weights sum to exactly 1 and are exact in float32.
LUMA_RGB = (19595 / 65536, 38470 / 65536, 7471 / 65536)


class TimmExportError(ValueError):
    """The target network cannot be written as a plain timm classifier; the message says why."""


# Set while `from_pretrained` builds the model: the checkpoint holds the backbone weights, so timm
# must not be asked to download its own.
_LOADING_CHECKPOINT = contextvars.ContextVar("jtln_loading_checkpoint", default=False)


@dataclass
class JointClassifierOutput(ModelOutput):
    """
    Output of [`JointImageClassifier`].

    Args:
        loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` is provided):
            Cross-entropy of the target head against `labels` (target classes). The joint JTLN
            objective is `jtln_hf.training.loss.JTLNLoss`, which `JTLNTrainer` evaluates; not computed here.
        logits (`torch.Tensor` of shape `(batch_size, num_labels)`):
            Target-head scores (before softmax), what pipelines read.
        source_logits (`torch.Tensor` of shape `(batch_size, num_source_labels)`):
            Source-head scores (before softmax).
        pooler_output (`torch.Tensor` of shape `(batch_size, num_features)`):
            Pooled backbone features shared by both heads (the features-* costs read them).
        hidden_states (`tuple(torch.Tensor)`, *optional*, returned when `output_hidden_states=True`):
            The backbone's intermediate feature maps (timm `forward_intermediates`).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    source_logits: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class ClassPrediction:
    """Predictions of one head of [`JointImageClassifier`] (see `predict` / `predict_source`).

    Args:
        probabilities (`torch.Tensor` of shape `(batch_size, num_classes)`): softmax of the head.
        label_ids (`torch.LongTensor` of shape `(batch_size,)`): the most probable class of each image.
        labels (`list[str]`): its name (`config.id2label` or `config.source_id2label`).
        scores (`torch.Tensor` of shape `(batch_size,)`): its probability.
    """

    probabilities: torch.Tensor
    label_ids: torch.Tensor
    labels: list[str]
    scores: torch.Tensor


class JointImageClassifierPreTrainedModel(PreTrainedModel):
    config_class = JointImageClassifierConfig
    config: JointImageClassifierConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # forward() takes no **kwargs: Trainer must not pass num_items_in_batch nor assume the loss is
    # already scaled for gradient accumulation.
    accepts_loss_kwargs = False
    _no_split_modules = []
    # Trainer's --gradient_checkpointing: timm's own (set_grad_checkpointing), see _set_gradient_checkpointing
    supports_gradient_checkpointing = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained` without timm downloads; a `ValueError` when the saved
        `cost_matrix` is not a valid ground cost or the weights' label sets differ from `config.json`'s."""
        token = _LOADING_CHECKPOINT.set(True)
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except RuntimeError as err:
            if "mismatched_sizes" not in str(err):
                raise
            raise ValueError(_label_mismatch_message(cls, pretrained_model_name_or_path, kwargs)) from err
        finally:
            _LOADING_CHECKPOINT.reset(token)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        cost = getattr(model, "cost_matrix", None)
        if cost is not None:
            try:
                check_cost_matrix(cost, model.config.num_source_labels, model.config.num_labels)
            except ValueError as err:
                raise ValueError(
                    f"checkpoint {pretrained_model_name_or_path}: its cost_matrix is not a valid ground cost "
                    f"({str(err).rstrip('.')}); restore the file, or set a new one with model.set_cost_matrix(C)."
                ) from None
        return loaded

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None,
                                    every_n_layers: int = 1) -> None:  # fmt: skip
        """Activation checkpointing of the backbone's blocks through timm's ``set_grad_checkpointing`` (what
        ``gradient_checkpointing_enable`` and Trainer's ``--gradient_checkpointing`` call): timm checkpoints its
        own stages with ``torch.utils.checkpoint`` (non-reentrant), so ``gradient_checkpointing_func`` and
        ``every_n_layers`` are not used. The heads are one linear layer each: nothing to recompute."""
        self.backbone.set_grad_checkpointing(enable)

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the two heads only: the backbone keeps timm's initialisation or pretrained weights."""
        if isinstance(module, nn.Linear) and module in (
            getattr(self, "source_head", None),
            getattr(self, "target_head", None),
        ):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            nn.init.zeros_(module.bias)


class JointImageClassifier(JointImageClassifierPreTrainedModel):
    """A timm backbone shared by a source head (L_s classes) and a target head (L_t classes).

    The source-target ground cost C (shape ``(L_s, L_t)``) is the persistent buffer
    ``cost_matrix``: it is saved in, and loaded from, every checkpoint.

    Args:
        config ([`JointImageClassifierConfig`]): the model configuration.
        cost_matrix (`torch.Tensor` or array-like, *optional*): initial C; zeros when omitted
            (set it later with [`set_cost_matrix`]).
    """

    def __init__(self, config: JointImageClassifierConfig, cost_matrix=None):
        super().__init__(config)
        if config.num_source_labels is None:
            raise ValueError(
                "JointImageClassifierConfig needs the source classes: pass source_id2label "
                "(or num_source_labels)."
            )
        pretrained = bool(config.pretrained_backbone) and not _LOADING_CHECKPOINT.get()
        try:
            self.backbone = timm.create_model(
                config.backbone, pretrained=pretrained, num_classes=0, **config.backbone_kwargs
            )
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(
                    f"unknown timm architecture {config.backbone!r}: pick a name from "
                    "timm.list_models() (e.g. 'resnet18', 'test_resnet')."
                ) from err
            raise
        if config.data_config is None:
            config.data_config = default_data_config(self.backbone)
        num_features = self.backbone.num_features
        self.dropout = nn.Dropout(config.head_dropout)
        self.source_head = nn.Linear(num_features, config.num_source_labels)
        self.target_head = nn.Linear(num_features, config.num_labels)
        self.register_buffer(
            "cost_matrix", torch.zeros(config.num_source_labels, config.num_labels), persistent=True
        )
        self.post_init()
        if cost_matrix is not None:
            self.set_cost_matrix(cost_matrix)

    def set_cost_matrix(self, cost) -> None:
        """Validate C (shape ``(L_s, L_t)``, finite, >= 0) and copy it into the `cost_matrix` buffer."""
        cost = torch.as_tensor(cost, dtype=torch.float32).detach().cpu()
        check_cost_matrix(cost, self.config.num_source_labels, self.config.num_labels)
        with torch.no_grad():
            self.cost_matrix.copy_(cost.to(self.cost_matrix.device))

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> JointClassifierOutput | tuple:
        """Run the backbone once and both heads on its pooled features.

        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, channels, height, width)`).
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): target-class ids; when
                given, `loss` is the target cross-entropy.
            output_hidden_states (`bool`, *optional*): also return the backbone's feature maps.
            return_dict (`bool`, *optional*): return a [`JointClassifierOutput`] (default) or a tuple.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = None
        if output_hidden_states:
            features, hidden_states = self.backbone.forward_intermediates(pixel_values)
            hidden_states = tuple(hidden_states)
        else:
            features = self.backbone.forward_features(pixel_values)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        dropped = self.dropout(pooled)
        logits = self.target_head(dropped)
        source_logits = self.source_head(dropped)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        if not return_dict:
            output = (logits, source_logits, pooled) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return JointClassifierOutput(
            loss=loss, logits=logits, source_logits=source_logits, pooler_output=pooled, hidden_states=hidden_states
        )

    @torch.no_grad()
    def predict(self, pixel_values, head: str = "target") -> ClassPrediction:
        """Class probabilities and top-1 names of one head (``"target"`` or ``"source"``).

        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, channels, height, width)`, or images):
                preprocessed pixels (``processor(images, return_tensors="pt")["pixel_values"]``), or
                PIL images / arrays (one or a list), which go through the model's image processor
                (the evaluation transform of ``config.data_config``, any mode converted).
            head (`str`, *optional*, defaults to `"target"`): which head to read.
        """
        if head not in ("target", "source"):
            raise ValueError(f"head must be 'target' or 'source', got {head!r}.")
        if not isinstance(pixel_values, torch.Tensor):
            from .image_processing_jtln import JointImageClassifierImageProcessor

            processor = JointImageClassifierImageProcessor(data_config=self.config.data_config)
            pixel_values = processor(pixel_values, return_tensors="pt")["pixel_values"]
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()  # no dropout
        try:
            outputs = self(pixel_values=pixel_values.to(device), return_dict=True)
        finally:
            self.train(was_training)
        scores = outputs.logits if head == "target" else outputs.source_logits
        names = self.config.id2label if head == "target" else self.config.source_id2label
        probabilities = scores.float().softmax(-1)
        best, label_ids = probabilities.max(-1)
        return ClassPrediction(probabilities, label_ids, [names[int(i)] for i in label_ids], best)

    def to_timm(self) -> nn.Module:
        """The target network (backbone + target head as timm's classifier) as a plain timm model, in eval mode.

        A grayscale model takes RGB: its first convolution's kernel is repeated over R, G, B times PIL's
        luma weights :data:`LUMA_RGB`, the same function on gray images. Raises :class:`TimmExportError`
        when the input has neither 1 nor 3 channels, timm's classifier is not one ``nn.Linear`` on the
        pooled features, or the weights do not map one to one.
        """
        config = self.config
        in_chans = int(config.data_config["input_size"][0])
        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        arch = cfg.get("architecture") or config.backbone
        where = f"cannot export backbone {arch!r} to timm:"
        if in_chans not in (1, 3):
            raise TimmExportError(f"{where} its input has {in_chans} channels, but timm's image processor and the "
                                  "image-classification pipeline give RGB images (3 channels; 1-channel models are "
                                  "mapped to them).")  # fmt: skip
        kwargs = {**config.backbone_kwargs, "in_chans": 3}
        export = timm.create_model(arch, pretrained=False, num_classes=config.num_labels, **kwargs)
        classifier = export.get_classifier()
        name = export.pretrained_cfg.get("classifier")
        if not isinstance(classifier, nn.Linear) or not isinstance(name, str):
            kind = "two classifiers" if isinstance(classifier, (tuple, list)) else type(classifier).__name__
            raise TimmExportError(f"{where} timm's classifier for it ({name}) is {kind}, not one nn.Linear on the "
                                  "pooled features that the target head could become.")  # fmt: skip
        if (classifier.in_features, classifier.out_features) != tuple(self.target_head.weight.shape[::-1]):
            raise TimmExportError(f"{where} timm's classifier maps {classifier.in_features} features to "
                                  f"{classifier.out_features}, the target head {self.target_head.in_features} to "
                                  f"{self.target_head.out_features}.")  # fmt: skip
        state = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        if in_chans == 1:
            first = cfg.get("first_conv") or export.pretrained_cfg.get("first_conv")
            conv = self.backbone.get_submodule(first) if isinstance(first, str) else None
            if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
                raise TimmExportError(f"{where} a grayscale model's first layer ({first}) must be one nn.Conv2d to "
                                      "take RGB images.")  # fmt: skip
            luma = torch.tensor(LUMA_RGB, dtype=conv.weight.dtype, device=conv.weight.device)
            state[f"{first}.weight"] = (conv.weight.detach() * luma.view(1, 3, 1, 1)).clone()
        state[f"{name}.weight"] = self.target_head.weight.detach().clone()
        state[f"{name}.bias"] = self.target_head.bias.detach().clone()
        expected = export.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or reshaped:
            what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                    else f"other shapes for {reshaped[:3]}")  # fmt: skip
            raise TimmExportError(f"{where} its weights with a classifier do not match the backbone's beyond the "
                                  f"classifier ({what}).")  # fmt: skip
        export.load_state_dict(state, strict=True)
        return export.to(self.target_head.weight.device).eval()

    def save_timm(self, folder: str | os.PathLike) -> None:
        """Write :meth:`to_timm` as a timm model folder (``timm.models.save_for_hf``): weights, label names and
        ``config.data_config`` as timm's ``pretrained_cfg``, loadable without jtln_hf (``local-dir:FOLDER``)."""
        export = self.to_timm()
        data = dict(self.config.data_config)
        channels = int(data["input_size"][0])
        data["input_size"] = [3, *data["input_size"][1:]]
        for key in ("mean", "std"):
            data[key] = list(data[key]) * (3 // channels) if len(data[key]) == channels else list(data[key])
        names = [self.config.id2label[i] for i in range(self.config.num_labels)]
        timm.models.save_for_hf(
            export, str(folder), model_config={"label_names": names}, data_config=data, safe_serialization=True
        )
        # timm records num_classes in model_args too, which TimmWrapperModel passes to timm.create_model
        # beside its own num_classes=num_labels (a TypeError); the root num_classes says it for both. The
        # tag named the source weights of the architecture's default config, not these.
        path = os.path.join(folder, "config.json")
        with open(path) as f:
            saved = json.load(f)
        saved.get("model_args", {}).pop("num_classes", None)
        saved["pretrained_cfg"].pop("tag", None)
        with open(path, "w") as f:
            json.dump(saved, f, indent=2)

    def predict_source(self, pixel_values) -> ClassPrediction:
        """Source-class predictions (`config.source_id2label`): the source head, which pipelines do not show."""
        return self.predict(pixel_values, head="source")


def _label_mismatch_message(cls, path, kwargs) -> str:
    """Why a checkpoint's tensors do not fit the model its config.json describes."""
    config = kwargs.get("config")
    if not isinstance(config, PretrainedConfig):
        config = cls.config_class.from_pretrained(path, subfolder=kwargs.get("subfolder", ""))
    shape = None
    try:  # the cost matrix's shape in the weights file, read from the safetensors header only
        file = cached_file(path, "model.safetensors", subfolder=kwargs.get("subfolder", ""),
                           _raise_exceptions_for_missing_entries=False)
        if file is not None:
            with safe_open(file, framework="pt") as f:
                if "cost_matrix" in f.keys():
                    shape = tuple(f.get_slice("cost_matrix").get_shape())
    except (OSError, ValueError):
        pass
    saved = f"cost_matrix of shape {shape} (L_s, L_t)" if shape else "a cost_matrix and heads"
    return (
        f"checkpoint {path}: its weights hold {saved} but config.json names {config.num_source_labels} source "
        f"classes (source_id2label) and {config.num_labels} target classes (id2label); restore the config.json "
        "saved with these weights, or pass ignore_mismatched_sizes=True for new heads and a zero cost."
    )


def default_data_config(backbone: nn.Module) -> dict:
    """timm's data config for this backbone, with `input_size` following its `in_chans`."""
    data_config = dict(timm.data.resolve_data_config({}, model=backbone))
    in_chans = getattr(backbone, "in_chans", None) or data_config["input_size"][0]
    _, height, width = data_config["input_size"]
    data_config["input_size"] = (in_chans, height, width)
    for key in ("mean", "std"):
        if len(data_config[key]) != in_chans:
            value = sum(data_config[key]) / len(data_config[key])
            data_config[key] = (value,) * in_chans
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}


# `save_pretrained` writes `auto_map` and copies this file and configuration_jtln.py beside the
# weights: `AutoModelForImageClassification.from_pretrained(..., trust_remote_code=True)` then works
# where jtln_hf is not installed.
JointImageClassifier.register_for_auto_class("AutoModelForImageClassification")
