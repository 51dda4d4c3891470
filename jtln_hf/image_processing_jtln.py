"""Image processor of the JTLN joint image classifier: timm's evaluation transform, any input image.

Every image is converted to the backbone's channels (``"L"``, ``"RGB"`` or ``"RGBA"``), then goes
through ``timm.data.create_transform(**config.data_config, is_training=False)``, the evaluation
transform of training. Remote code: imports only torch, timm, transformers (and PIL, numpy).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import timm.data
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import ChannelDimension, load_image

#: Keys of a timm data config that ``timm.data.create_transform`` understands.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class JointImageClassifierImageProcessor(BaseImageProcessor):
    r"""
    Preprocess images for a [`JointImageClassifier`] with timm's evaluation transform.

    Args:
        data_config (`dict[str, Any]`):
            timm data config, as stored in `JointImageClassifierConfig.data_config`: `input_size`
            (`[channels, height, width]`), `interpolation`, `mean`, `std`, `crop_pct`, `crop_mode`.
            The transform is `timm.data.create_transform(**data_config, is_training=False)`:
            resize the shorter side to `height / crop_pct`, centre-crop to `height x width`,
            scale to [0, 1], normalise with `mean`/`std`.

    Example:
    ```python
    >>> from PIL import Image
    >>> processor = JointImageClassifierImageProcessor.from_model_config(model.config)
    >>> processor(Image.new("RGB", (64, 48)), return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 1, 28, 28])
    ```
    """

    model_input_names = ["pixel_values"]

    def __init__(self, data_config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not data_config or "input_size" not in data_config:
            raise ValueError(
                "JointImageClassifierImageProcessor needs a timm data_config with at least 'input_size': "
                "build it with JointImageClassifierImageProcessor.from_model_config(model.config)."
            )
        self.data_config = {
            k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items() if k in DATA_CONFIG_KEYS
        }
        channels = int(self.data_config["input_size"][0])
        if channels not in CHANNEL_MODES:
            raise ValueError(f"input_size has {channels} channels: only 1 (grayscale), 3 (RGB) and 4 (RGBA) are "
                             "supported.")  # fmt: skip
        self._mode = CHANNEL_MODES[channels]
        timm_config = {k: tuple(v) if isinstance(v, list) else v for k, v in self.data_config.items()}
        self._transform = timm.data.create_transform(**timm_config, is_training=False)

    @classmethod
    def from_model_config(cls, config: Any) -> JointImageClassifierImageProcessor:
        """The processor of a model, from its configuration's ``data_config``."""
        return cls(data_config=config.data_config)

    @property
    def image_mode(self) -> str:
        """PIL mode every image is converted to: ``"L"``, ``"RGB"`` or ``"RGBA"`` (1, 3 or 4 channels)."""
        return self._mode

    @property
    def transform(self):
        """The timm evaluation transform (PIL image in the right mode -> normalised tensor)."""
        return self._transform

    def to_pil(self, image: Any) -> PIL.Image.Image:
        """One image (PIL, path/URL, ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` array/tensor) as PIL in ``image_mode``.

        Arrays of floats are taken to be in [0, 1]; palette and transparent images are flattened
        (palette -> RGBA -> RGB drops the alpha channel, as timm's own loaders do). A local file is
        opened as training decodes it (:func:`open_image`), so a 4-channel model keeps its alpha.
        """
        if isinstance(image, (str, os.PathLike)):
            image = open_image(image)
        return to_mode(image, self._mode)

    def preprocess(
        self, images: Any, return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """Transform one image or a batch into ``pixel_values`` of shape ``(batch, C, H, W)``.

        Args:
            images: a PIL image, a path or URL, an array/tensor with 2 (``H, W``) or 3 dimensions,
                a 4-dimensional batch, or a list of any of these.
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` (torch) or `"np"`.
        """
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")
        pixel_values = torch.stack([self._transform(self.to_pil(image)) for image in _flat_images(images)])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors or "pt")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable settings: ``data_config`` (and ``auto_map`` once saved as remote code)."""
        output = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        output["image_processor_type"] = type(self).__name__
        return output


#: PIL mode of each supported channel count (training uses the same: ``jtln_hf.data``).
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def to_mode(image: Any, mode: str) -> PIL.Image.Image:
    """A PIL image, ``(H, W)``/``(H, W, C)``/``(C, H, W)`` array or tensor, as a PIL image in ``mode``.

    The one conversion that training (``jtln_hf.data.make_batch_transform``) and inference (this
    processor) share, so both see the same pixels: float arrays are taken to be in [0, 1]; a
    palette image goes through RGBA first, so its transparency is kept for 4-channel models (and,
    as in timm's loaders, dropped by the conversion to RGB or L).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"unsupported image type {type(image).__name__}: pass PIL images, numpy arrays or tensors.")
    if image.mode == mode:
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert(mode)


def open_image(source: str | os.PathLike) -> PIL.Image.Image:
    """A local image file in its own mode, as ``datasets.Image`` decodes it for training; else ``load_image``.

    transformers' ``load_image`` converts every image to RGB, which dropped the alpha channel of
    RGBA/LA files that a 4-channel model sees in training. A local file is opened with PIL
    instead, its EXIF orientation applied when it has one (as ``datasets`` does), and its mode
    kept for :func:`to_mode`. URLs and base64 strings still go through ``load_image`` (RGB).
    """
    path = os.fspath(source)
    if not os.path.isfile(path):
        return load_image(path)
    image = PIL.Image.open(path)
    image.load()
    if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
        image = PIL.ImageOps.exif_transpose(image)
    return image


def _flat_images(images: Any) -> list[Any]:
    """A single image or a batch as a list of single images.

    Not ``transformers.image_utils.make_flat_list_of_images``: it needs every image to have the
    same number of dimensions (3 by default), so it refuses ``(H, W)`` grayscale arrays, paths
    and URLs, and lists mixing images with lists of images, all of which this processor accepts.
    """
    if isinstance(images, (list, tuple)):
        return [img for item in images for img in _flat_images(item)]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def _array_to_pil(array: np.ndarray) -> PIL.Image.Image:
    """``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` (C in 1, 3, 4) as a PIL image (transformers' ``to_pil_image``).

    Two things are decided here rather than by ``to_pil_image``: the channel axis (the last one
    unless only the first has 1, 3 or 4 entries; its own guess knows 1 and 3 channels only and
    prefers the first axis), and the conversion to uint8 (:func:`_to_uint8` takes every float
    image to be in [0, 1], rounds and clips; ``to_pil_image`` truncates, rejects floats just
    outside [0, 1], and reads a float image of whole numbers, e.g. a 0/1 mask, as 0-255).
    """
    image = array[..., None] if array.ndim == 2 else array  # (H, W): one channel, last
    channels_first = image.ndim == 3 and image.shape[-1] not in (1, 3, 4) and image.shape[0] in (1, 3, 4)
    if image.ndim != 3 or image.shape[0 if channels_first else -1] not in (1, 3, 4):
        raise ValueError(f"cannot read an image of shape {array.shape}: expected (H, W), (H, W, C) or (C, H, W).")
    layout = ChannelDimension.FIRST if channels_first else ChannelDimension.LAST
    return to_pil_image(_to_uint8(image), input_data_format=layout)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """An image array as uint8 (floats are taken to be in [0, 1])."""
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


JointImageClassifierImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["JointImageClassifierImageProcessor"]
