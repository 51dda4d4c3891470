"""Backbone weights: check, before anything trains, that timm will find the weights it is asked for
(``timm.create_model(name, pretrained=True)``, or ``pretrained_cfg_overlay=dict(file=PATH)`` for a local
file), and say in one line which fix applies (``--backbone_checkpoint`` or the cache) instead of timm's
download retries (docs/design.md, "Pitfalls").
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

from .errors import did_you_mean

#: Weight files timm reads through ``pretrained_cfg_overlay=dict(file=...)``.
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: Files timm downloads from a ``timm/...`` Hub repository, in the order it tries them.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
HUB_HOST_TIMEOUT_S = 3.0


def check_architecture(name: str) -> None:
    """Raise a ``ValueError`` when ``name`` is neither a timm architecture nor an ``hf-hub:`` id."""
    if name.startswith("hf-hub:") or timm.is_model(name):
        return
    raise ValueError(
        f"--backbone {name!r} is not a timm architecture{did_you_mean(name, timm.list_models())}: pick a name "
        "from timm.list_models(), or an 'hf-hub:<repo>' id."
    )


def check_checkpoint(path: str | os.PathLike) -> None:
    """Raise a ``ValueError`` unless ``path`` is a readable file of timm weights (a state dict).

    ``.safetensors`` files are opened for their keys only; ``.pth``/``.pt``/``.bin`` files are read
    with ``torch.load(weights_only=True)`` (never unpickling code), which is also how timm reads them.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--backbone_checkpoint {path}: no such file; pass a .safetensors/.pth/.bin of timm weights.")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"--backbone_checkpoint {path}: unknown weight format {path.suffix!r}; "
                         f"use one of {list(CHECKPOINT_SUFFIXES)}.")  # fmt: skip
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "state_dict_ema"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
                    break
            keys = [k for k, v in state.items() if isinstance(v, torch.Tensor)] if isinstance(state, dict) else []
    except Exception as err:  # any reader error: the file is not usable weights
        raise ValueError(f"--backbone_checkpoint {path}: cannot be read as weights "
                         f"({type(err).__name__}: {str(err).splitlines()[0]}).") from err  # fmt: skip
    if not keys:
        raise ValueError(f"--backbone_checkpoint {path}: holds no tensors; save it with "
                         "safetensors.torch.save_file(model.state_dict(), path).")  # fmt: skip


def cached_weights(name: str) -> str | None:
    """A local copy of timm's pretrained weights for ``name`` (HF cache or torch hub cache), if any."""
    if name.startswith("hf-hub:"):
        repos, url = [name.removeprefix("hf-hub:").split("@")[0]], None
    else:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            return None
        repos, url = ([cfg.hf_hub_id] if cfg.hf_hub_id else []), cfg.url
    for repo in repos:
        for filename in HUB_WEIGHT_FILES:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return found
    if url:
        legacy = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if legacy.is_file():
            return str(legacy)
    return None


def hub_reachable(timeout: float = HUB_HOST_TIMEOUT_S) -> bool:
    """Whether the Hub's host accepts a TCP connection within ``timeout`` seconds (no retries)."""
    if hub_constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_pretrained_available(name: str) -> None:
    """Raise a one-line ``ValueError`` when timm's weights for ``name`` can be neither read nor downloaded."""
    if name.startswith("hf-hub:") or (timm.models.get_pretrained_cfg(name) is not None):
        if cached_weights(name) is not None or hub_reachable():
            return
        why = "HF_HUB_OFFLINE=1 is set" if hub_constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise ValueError(
            f"--pretrained_backbone: timm's weights for {name!r} are not in the local cache "
            f"({hub_constants.HF_HUB_CACHE}) and {why}: download them once where there is network "
            f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\"), or pass "
            "--backbone_checkpoint PATH to a local .safetensors/.pth/.bin of timm weights."
        )
    raise ValueError(f"--pretrained_backbone: timm has no pretrained weights for {name!r}; "
                     "pass --backbone_checkpoint PATH, or train from scratch.")  # fmt: skip


def check_backbone(name: str, *, pretrained: bool, checkpoint: str | None) -> None:
    """Every check of the backbone flags, in the order a user would fix them."""
    check_architecture(name)
    if checkpoint is not None:
        check_checkpoint(checkpoint)
    elif pretrained:
        check_pretrained_available(name)
    elif name.startswith("hf-hub:") and cached_config(name) is None and not hub_reachable():
        raise ValueError(f"--backbone {name}: its config.json is not in the local cache and the Hub cannot be "
                         "reached: use the timm architecture name instead.")  # fmt: skip


def patch_size(name: str, backbone_kwargs: dict) -> tuple[int, int] | None:
    """The patch size of a backbone that cuts images into patches (a ViT's ``patch_embed``), else None.

    Read from the architecture built on the meta device (no weights loaded or allocated).
    """
    kwargs = {k: v for k, v in backbone_kwargs.items() if k != "pretrained_cfg_overlay"}
    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    size = getattr(getattr(net, "patch_embed", None), "patch_size", None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_patch_size(name: str, patch: tuple[int, int], image_size: int, where: str) -> None:
    """Raise a one-line ``ValueError`` when ``image_size`` is not a multiple of the backbone's ``patch`` size."""
    if image_size % patch[0] or image_size % patch[1]:
        multiple = -(-image_size // max(patch)) * max(patch)
        raise ValueError(f"--backbone {name} cuts images into {patch[0]}x{patch[1]} patches and the input is "
                         f"{image_size} px ({where}): pass --image_size {multiple} (a multiple of {max(patch)}).")


def cached_config(name: str) -> str | None:
    found = try_to_load_from_cache(name.removeprefix("hf-hub:").split("@")[0], "config.json")
    return found if isinstance(found, str) else None


__all__ = [
    "CHECKPOINT_SUFFIXES",
    "cached_weights",
    "check_architecture",
    "check_backbone",
    "check_checkpoint",
    "check_patch_size",
    "check_pretrained_available",
    "hub_reachable",
    "patch_size",
]
