"""LoRA adapters on the backbone: which layers per timm family, the wrapping for training, the merged model
for the model folder, and the adapter folder.

A few-shot user (5-50 labelled images per target class) fine-tunes a large pretrained backbone (a ViT,
DINOv2, ConvNeXt) with low-rank adapters (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
ICLR 2022): each chosen weight :math:`W` of the backbone stays frozen and learns
:math:`W + \\frac{\\alpha}{r} B A` with :math:`A \\in \\mathbb{R}^{r \\times d_{in}}`,
:math:`B \\in \\mathbb{R}^{d_{out} \\times r}` (:math:`B = 0` at the start); the two heads train fully.
PEFT does the adapters (``peft.get_peft_model`` takes any torch module, timm's included); this module only
names timm's layers per family (:data:`DEFAULT_TARGETS`), and writes what PEFT does not: the merged
:class:`~jtln_hf.JointImageClassifier` and the heads and C beside the adapter.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file
from torch import nn

from ..modeling_jtln import JointImageClassifier

if TYPE_CHECKING:
    from peft import LoraConfig

# peft is imported where adapters are made (0.3 s): a run without --lora_rank never loads it.

#: timm model class -> the layers LoRA adapts by default (a regular expression over module names, PEFT's
#: ``target_modules`` as a string: a full match). A ViT's (DINOv2 and DeiT are timm VisionTransformers)
#: attention and MLP linears; a ConvNeXt's pointwise convolutions (timm writes them as ``nn.Linear``; its
#: depthwise ones are grouped, which PEFT's LoRA does not merge); a ResNet's block convolutions.
DEFAULT_TARGETS = {
    "VisionTransformer": r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
    "Eva": r"blocks\.\d+\.(attn\.(qkv|q_proj|k_proj|v_proj|proj)|mlp\.(fc1|fc2|fc1_g|fc1_x))",
    "ConvNeXt": r"stages\.\d+\.blocks\.\d+\.mlp\.(fc1|fc2)",
    "ResNet": r"layer\d+\.\d+\.conv\d",
}
#: The adapter folder inside a saved model folder, and the file beside PEFT's two that holds the heads and C.
ADAPTER_FOLDER = "adapter"
HEADS_FILE = "heads.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    """``--lora_rank`` and its flags, resolved: ``targets`` is a regular expression over the backbone's module
    names (the family's default of :data:`DEFAULT_TARGETS`) or a tuple of names or name suffixes, as PEFT reads
    ``target_modules``."""

    rank: int
    alpha: float
    dropout: float
    targets: str | tuple[str, ...]

    def config(self) -> LoraConfig:
        """PEFT's :class:`~peft.LoraConfig` for these settings (no bias trained)."""
        from peft import LoraConfig

        targets = self.targets if isinstance(self.targets, str) else list(self.targets)
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          bias="none")  # fmt: skip

    def describe(self) -> str:
        """One line for the card: rank, alpha, dropout and the adapted layers."""
        targets = self.targets if isinstance(self.targets, str) else ", ".join(self.targets)
        return f"rank {self.rank}, alpha {self.alpha:g}, dropout {self.dropout:g}, on `{targets}`"


def default_targets(backbone: nn.Module) -> str | None:
    """The default LoRA layers of ``backbone``'s family (:data:`DEFAULT_TARGETS`, by class and base class), or None."""
    for cls in type(backbone).__mro__:
        if cls.__name__ in DEFAULT_TARGETS:
            return DEFAULT_TARGETS[cls.__name__]
    return None


def lora_settings(rank: int | None, alpha: float | None, dropout: float, targets: list[str] | None,
                  backbone: nn.Module, name: str) -> LoraSettings | None:  # fmt: skip
    """Resolve the ``--lora_*`` flags for ``backbone`` (timm architecture ``name``); None without ``--lora_rank``.

    ``alpha`` defaults to ``2 * rank``: the update's scale :math:`\\alpha / r = 2` whatever the rank, so a new
    ``--lora_rank`` does not change it (PEFT's own default is a fixed ``lora_alpha=8``); ``targets`` defaults to the
    family's :data:`DEFAULT_TARGETS`. Raises a one-line ``ValueError`` for a rank
    below 1, a dropout outside [0, 1), a family without defaults and no ``--lora_target_modules``, or targets
    that name no ``nn.Linear`` / ``nn.Conv2d`` of the backbone.
    """
    if rank is None:
        if alpha is not None or targets:
            raise ValueError("--lora_alpha and --lora_target_modules set up LoRA adapters: add --lora_rank R.")
        return None
    if rank < 1:
        raise ValueError(f"--lora_rank must be >= 1, got {rank}: pass the adapters' rank (e.g. 8).")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {dropout}.")
    resolved: str | tuple[str, ...] | None = tuple(targets) if targets else default_targets(backbone)
    adaptable = [n for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    example = " ".join(adaptable[-3:])
    if resolved is None:
        raise ValueError(f"--lora_rank: no default layers for backbone {name!r} ({type(backbone).__name__}): pass "
                         f"--lora_target_modules with some of its layers, e.g. {example}.")  # fmt: skip
    settings = LoraSettings(rank, float(2 * rank if alpha is None else alpha), float(dropout), resolved)
    if not _matched(backbone, settings):
        raise ValueError(f"--lora_target_modules {' '.join(targets or [])} name no nn.Linear or nn.Conv2d of "
                         f"backbone {name!r}: pass module names or their last parts, e.g. {example}.")  # fmt: skip
    return settings


def _matched(backbone: nn.Module, settings: LoraSettings) -> list[str]:
    """The backbone's ``nn.Linear`` / ``nn.Conv2d`` layers that ``settings.targets`` name, as PEFT matches them."""

    def named(name: str) -> bool:
        if isinstance(settings.targets, str):
            return re.fullmatch(settings.targets, name) is not None
        return any(name == t or name.endswith(f".{t}") for t in settings.targets)

    return [n for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and named(n)]


def add_lora(model: JointImageClassifier, settings: LoraSettings) -> None:
    """Wrap ``model.backbone`` in PEFT's LoRA, in place: the adapted layers' base weights and every other
    backbone weight frozen, the adapters and the two heads trained. The adapters' :math:`A` are drawn from
    torch's generator (seed it first for the same initial weights across methods), :math:`B = 0`."""
    from peft import get_peft_model

    model.backbone = get_peft_model(model.backbone, settings.config())


def has_lora(model: nn.Module) -> bool:
    """Whether ``model``'s backbone carries LoRA adapters (:func:`add_lora`; none before peft is imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(getattr(model, "backbone", None), peft.PeftModel)


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters) of ``model``, the adapters counted among all."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merged_model(model: JointImageClassifier) -> JointImageClassifier:
    """A copy of ``model`` with its adapters merged into the backbone's weights (``W + (alpha / r) B A``), a plain
    :class:`~jtln_hf.JointImageClassifier` that saves, loads and exports as full fine-tuning does; ``model`` itself
    when it has no adapters. The merged weights equal the adapted ones up to float rounding of the sum."""
    if not has_lora(model):
        return model
    merged = copy.deepcopy(model)
    merged.backbone = merged.backbone.merge_and_unload()
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged


def save_adapter(model: JointImageClassifier, folder: str | Path) -> None:
    """Write the adapters in PEFT's format (``adapter_config.json``, ``adapter_model.safetensors``) with the heads
    and C (:data:`HEADS_FILE`) and a README saying how to apply them to the same pretrained timm backbone."""
    folder = Path(folder)
    backbone = model.backbone
    backbone.peft_config["default"].base_model_name_or_path = model.config.backbone
    backbone.save_pretrained(str(folder), save_embedding_layers=False)
    heads = {f"{name}.{k}": v.detach().cpu().contiguous() for name in ("source_head", "target_head")
             for k, v in getattr(model, name).state_dict().items()}  # fmt: skip
    heads["cost_matrix"] = model.cost_matrix.detach().cpu().contiguous()
    labels = {"id2label": {str(k): v for k, v in model.config.id2label.items()},
              "source_id2label": {str(k): v for k, v in model.config.source_id2label.items()}}  # fmt: skip
    save_file(heads, str(folder / HEADS_FILE), metadata={"labels": json.dumps(labels)})
    kwargs = {k: v for k, v in model.config.backbone_kwargs.items() if k != "pretrained_cfg_overlay"}
    create = ", ".join([f"{model.config.backbone!r}", "pretrained=True", "num_classes=0",
                        *(f"{k}={v!r}" for k, v in kwargs.items())])  # fmt: skip
    base = ("Apply them to the same pretrained timm backbone" if model.config.pretrained_backbone else
            "This run trained from scratch: the adapters' base weights are its seeded initial weights, which timm "
            "does not ship, so use the merged model; with a backbone of the same weights")  # fmt: skip
    (folder / "README.md").write_text(
        "# LoRA adapters of a JTLN model\n\n"
        f"The backbone's LoRA adapters (rank {backbone.peft_config['default'].r}) in PEFT's format, and the two "
        f"heads and the cost matrix C in `{HEADS_FILE}`. The folder above holds the same model with the adapters "
        f"merged (`JointImageClassifier.from_pretrained`). {base}:\n\n"
        "```python\nimport timm\nfrom peft import PeftModel\n\n"
        f"backbone = timm.create_model({create})\n"
        'backbone = PeftModel.from_pretrained(backbone, "adapter")  # this folder\n'
        "features = backbone.forward_head(backbone.forward_features(pixel_values), pre_logits=True)\n```\n"
    )


__all__ = [
    "ADAPTER_FOLDER",
    "DEFAULT_TARGETS",
    "HEADS_FILE",
    "LoraSettings",
    "add_lora",
    "default_targets",
    "has_lora",
    "lora_settings",
    "merged_model",
    "save_adapter",
    "trainable_share",
]
