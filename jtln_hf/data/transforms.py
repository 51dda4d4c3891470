"""timm transforms, the batch transform (per-row decoding errors, seeded augmentation) and collate."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import timm.data
import torch
import torchvision.transforms
from PIL import Image as PILImage

from ..image_processing_jtln import CHANNEL_MODES, to_mode
from .decode import crop_scale_step, looks_like_jpeg
from .domains import SOURCE, TARGET

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------- transforms
def build_transform(data_config: dict[str, Any], training: bool, **train_kwargs: Any) -> Callable:
    """timm's transform for ``data_config`` (``timm.data.create_transform``).

    ``train_kwargs`` go to timm for training (e.g. ``scale=(0.7, 1.0)``, ``hflip=0.5``).
    """
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    if training:
        return timm.data.create_transform(**cfg, is_training=True, **train_kwargs)
    return timm.data.create_transform(**cfg, is_training=False)


#: Image errors the batch transform and :func:`check_images` turn into a message naming the row.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, PILImage.DecompressionBombError)
#: The batch key of the rows a batch skipped (``make_batch_transform(replace=...)``): one list of records per row.
BAD_IMAGES_KEY = "bad_images"
#: A function ``(domain, row) -> stand-in rows`` (``{"image", "label", "row"}`` dicts) for an unreadable row.
Replace = Callable[[int, int], Iterator[dict[str, Any]]]


class BatchTransform:
    """The function :func:`make_batch_transform` returns: ``transform(batch, replace=...)``, pickled as that call.

    Pickling (``__reduce__``) gives :func:`make_batch_transform` and its arguments, not the closure that does
    the work. Why by hand: ``Dataset.with_transform`` fingerprints its function by pickling it with dill, and
    dill pickles a closure by value, disassembling the bytecode of every function it reaches: about 0.5 s per
    ``with_transform`` on a 2-core machine, 15 of them in a five-method run, a third of a short run's time. The
    arguments (timm's ``Compose``, numbers, the stand-ins) pickle in milliseconds and name the transform as
    well (two equal calls, one fingerprint). The same pickle rebuilds the transform in a data-loader worker
    started by ``spawn`` or ``forkserver``, where the closure itself could not be pickled.
    """

    def __init__(self, apply: Callable[..., dict], arguments: tuple) -> None:
        self._apply, self._arguments = apply, arguments

    def __call__(self, batch: dict[str, list], **kwargs: Any) -> dict[str, list]:
        return self._apply(batch, **kwargs)

    def __reduce__(self) -> tuple[Callable, tuple]:
        return _rebuild_batch_transform, self._arguments


def _rebuild_batch_transform(transform: Callable, in_chans: int, seed: int, replace: Replace | None,
                             crop_scale: bool) -> BatchTransform:  # fmt: skip
    return make_batch_transform(transform, in_chans, seed=seed, replace=replace, crop_scale=crop_scale)


def make_batch_transform(transform: Callable, in_chans: int, *, seed: int = 0,
                         replace: Replace | None = None, crop_scale: bool = True) -> BatchTransform:  # fmt: skip
    """A ``Dataset.with_transform`` function: images -> ``pixel_values``, ``label`` -> ``labels``.

    * **Channels.** Images are converted to the backbone's channel count ("L" for 1, "RGB" for
      3, "RGBA" for 4), so grayscale, colour, palette and alpha inputs all work.
    * **Decoding.** Images may come decoded (PIL, arrays) or undecoded (``{"bytes", "path"}``
      dicts of ``datasets.Image(decode=False)``, as :func:`build_joint_dataset` stores them).
      An image that cannot be decoded raises a ``ValueError`` naming its row (``domain`` and
      ``row`` columns, added by :func:`build_joint_dataset`) and the decoder's message.
    * **Unreadable rows replaced** (with ``replace``, e.g. :class:`~jtln_hf.data.bad_images.StandIns`).
      A row whose image cannot be decoded is replaced, in place, by the first of
      ``replace(domain, row)`` that decodes: the batch keeps its size and its domains. Each
      skipped row is logged (a warning) and recorded (``domain``, ``row``, ``path``, ``error``)
      under :data:`BAD_IMAGES_KEY`, a list per row of the batch, which :func:`collate` joins.
    * **Random augmentation without global state.** Each image is transformed with Python's,
      NumPy's and torch's CPU generators seeded from ``seed``, the identities of the batch's
      rows (``(domain, row)``, else a hash of the image) and its position in the batch; the
      global generator states are restored afterwards. The augmentation of a batch is thus a
      function of the batch alone: independent of what ran before, of data-loader workers, of
      prefetching, and identical when a resumed run replays the batch (transformers' Trainer
      restores the global RNG state *after* the first resumed batches are loaded, so augmentation
      drawn from the global generators would differ). A batch's rows are drawn at random by
      :class:`PairedBatchSampler`, so a row seen again (another epoch, or a re-sampled target
      row) almost surely sits in a different batch and gets a fresh augmentation.
    * **One batch tensor.** When ``transform`` is a ``Compose`` ending in ``ToTensor`` (or timm's
      ``MaybeToTensor``) and ``Normalize``, as timm's are, those two steps write every image of
      the batch straight into one ``(batch, C, H, W)`` tensor (in shared memory inside a
      data-loader worker), with the same operations, hence the same bits; ``pixel_values`` holds
      its rows and :func:`collate` returns that tensor without copying it.
    * **JPEGs decoded at their crop's scale** (``crop_scale``, :mod:`jtln_hf.data.decode`): when the
      transform starts with timm's RandomResizedCrop (or Resize + CenterCrop) and the batch has ``domain``
      and ``row`` columns, an undecoded JPEG is decoded at the smallest DCT scale that keeps its box's
      pixels, inside the seeded section (its box comes from the same generator calls). A batch without
      JPEGs takes the path above, bit for bit, and so do the other images of a batch with JPEGs; there a row
      replaced by a stand-in keeps the original row's seed.

    Args:
        transform: per-image transform (e.g. :func:`build_transform`).
        in_chans: the backbone's input channels (1, 3 or 4).
        seed: salt of the augmentation seeds.
        replace: stand-ins of an unreadable row (a batch needs ``domain`` and ``row``); None:
            raise. ``apply(batch, replace=...)`` overrides it for one call (a stream's own).
        crop_scale: decode JPEGs at their crop's scale (``--decode_at_crop_scale``); False: always decode fully.

    Returns:
        A :class:`BatchTransform`: callable on a batch, pickled as this call with these arguments.
    """
    if in_chans not in CHANNEL_MODES:
        raise ValueError(
            f"in_chans={in_chans} has no PIL image mode: use 1 (grayscale), 3 (RGB) or 4 (RGBA), "
            "or give Dataset.with_transform your own function."
        )
    mode = CHANNEL_MODES[in_chans]
    pil_steps, to_tensor_tail = _split_tensor_tail(transform)
    fused = crop_scale_step(transform, mode) if crop_scale else None
    first, rest_steps = (fused[0], _split_tensor_tail(fused[1])[0]) if fused is not None else (None, None)

    def apply(batch: dict[str, list], replace: Replace | None = replace) -> dict[str, list]:
        if fused is not None and "row" in batch and "domain" in batch and any(map(looks_like_jpeg, batch["image"])):
            return _apply_at_crop_scale(batch, replace)
        skipped = None
        if replace is not None:
            batch, skipped = _decode_or_replace(batch, replace)
        images = [to_mode(_decode(img, batch, k), mode) for k, img in enumerate(batch["image"])]
        keys = _row_keys(batch, images)
        batch_key = hashlib.blake2b(repr((seed, keys)).encode(), digest_size=16).digest()
        transformed = []
        with _preserved_global_rng():
            for k, image in enumerate(images):
                _seed_generators(batch_key, k)
                transformed.append(pil_steps(image))
        out = {"pixel_values": to_tensor_tail(transformed)}
        if "label" in batch:
            out["labels"] = batch["label"]
        if "domain" in batch:
            out["domain"] = batch["domain"]
        if skipped is not None:
            out["row"], out[BAD_IMAGES_KEY] = batch["row"], skipped
        return out

    def _apply_at_crop_scale(batch: dict[str, list], replace: Replace | None) -> dict[str, list]:
        """``apply`` with each image decoded inside its seeded section (a JPEG at its crop's scale)."""
        keys = [(int(d), int(r)) for d, r in zip(batch["domain"], batch["row"])]
        batch_key = hashlib.blake2b(repr((seed, keys)).encode(), digest_size=16).digest()
        columns = [c for c in ("image", "label", "row") if c in batch]
        taken = {c: list(batch[c]) for c in columns if c != "image"}
        skipped: list[list[dict]] = [[] for _ in batch["image"]]
        transformed = []
        with _preserved_global_rng():
            for k in range(len(batch["image"])):
                row, stand_ins = {c: batch[c][k] for c in columns}, None
                while True:
                    _seed_generators(batch_key, k)
                    try:
                        image = first(row["image"])  # None (no generator drawn): not a JPEG it scales
                        if image is None:
                            image = pil_steps(to_mode(_decode_one(row["image"]), mode))
                        else:
                            image = rest_steps(image)
                        break
                    except IMAGE_ERRORS as err:
                        if replace is None:
                            raise _unreadable(row["image"], batch, k, err) from err
                        skipped[k].append(_skip_record(int(batch["domain"][k]), row, err))
                        stand_ins = stand_ins or replace(int(batch["domain"][k]), int(skipped[k][0]["row"]))
                        row = next(stand_ins, None)
                        if row is None:
                            raise ValueError(f"no image of the {skipped[k][0]['domain']} rows can be decoded (the "
                                             f"last: {skipped[k][-1]['error']}): check the dataset's files.") from err
                for c in taken:
                    taken[c][k] = row[c]
                transformed.append(image)
        out = {"pixel_values": to_tensor_tail(transformed)}
        if "label" in batch:
            out["labels"] = taken["label"]
        out["domain"] = batch["domain"]
        if replace is not None:
            out["row"], out[BAD_IMAGES_KEY] = taken["row"], skipped
        return out

    return BatchTransform(apply, (transform, in_chans, seed, replace, crop_scale))


def _decode_or_replace(batch: dict[str, list], replace: Replace) -> tuple[dict[str, list], list[list[dict]]]:
    """``batch`` with every image decoded, an unreadable one replaced by a stand-in; the records per row."""
    if "domain" not in batch or "row" not in batch:
        raise ValueError("replacing unreadable images needs 'domain' and 'row' columns: build the dataset with "
                         "jtln_hf.data.build_joint_dataset.")  # fmt: skip
    columns = [c for c in ("image", "label", "row") if c in batch]
    out = {**batch, **{c: list(batch[c]) for c in columns}}
    skipped: list[list[dict]] = [[] for _ in batch["image"]]
    for k in range(len(batch["image"])):
        row, stand_ins = {c: batch[c][k] for c in columns}, None
        while True:
            try:
                image = _decode_one(row["image"])
                break
            except IMAGE_ERRORS as err:
                skipped[k].append(_skip_record(int(batch["domain"][k]), row, err))
                stand_ins = stand_ins or replace(int(batch["domain"][k]), int(skipped[k][0]["row"]))
                row = next(stand_ins, None)
                if row is None:
                    raise ValueError(f"no image of the {skipped[k][0]['domain']} rows can be decoded (the last: "
                                     f"{skipped[k][-1]['error']}): check the dataset's files.") from err  # fmt: skip
        for c in columns:
            out[c][k] = image if c == "image" else row[c]
    return out, skipped


def _decode_one(image: Any) -> Any:
    return datasets.Image().decode_example(image) if isinstance(image, dict) else image


def _skip_record(domain: int, row: dict[str, Any], err: BaseException) -> dict[str, Any]:
    """What is recorded, and logged once, of a skipped row: its domain, row, path and the decoder's error."""
    image = row["image"] if isinstance(row["image"], dict) else {}
    record = {"domain": {SOURCE: "source", TARGET: "target"}.get(domain, str(domain)), "row": int(row["row"]),
              "path": image.get("path"), "error": f"{type(err).__name__}: {err}"}  # fmt: skip
    path = f" (path {record['path']!r})" if record["path"] else ""
    logger.warning(f"skipped {record['domain']} row {record['row']}{path}, replaced by another row: {record['error']}")
    return record


def _split_tensor_tail(transform: Callable) -> tuple[Callable, Callable[[list], list]]:
    """``transform`` as (per-image steps, a function of the list of their outputs -> list of tensors).

    For a ``Compose`` ending in ``ToTensor``/``MaybeToTensor`` + ``Normalize`` the second writes the
    whole batch into one tensor (:func:`_normalized_batch`); for any other transform it is the identity.
    """
    steps = getattr(transform, "transforms", None)
    if type(transform) is not torchvision.transforms.Compose or len(steps) < 2:
        return transform, list
    to_tensor, normalize = steps[-2:]
    if type(to_tensor) not in (torchvision.transforms.ToTensor, timm.data.transforms.MaybeToTensor):
        return transform, list
    if type(normalize) is not torchvision.transforms.Normalize:
        return transform, list
    head = torchvision.transforms.Compose(steps[:-2])

    def tail(images: list) -> list:
        return _normalized_batch(images, normalize) or [normalize(to_tensor(image)) for image in images]

    return head, tail


def _normalized_batch(images: list, normalize: torchvision.transforms.Normalize) -> list[torch.Tensor] | None:
    """``[normalize(to_tensor(im)) for im in images]`` as the rows of one batch tensor; ``None`` if not applicable.

    torchvision's ``to_tensor`` of an 8-bit PIL image is ``float(u8) / 255`` (CHW) and ``Normalize``
    is ``(x - mean) / std``: the same element-wise operations are applied here in place, in the
    batch tensor, so every value is rounded exactly as there. Only 8-bit L/RGB/RGBA images of one
    size and mode qualify; anything else (or a zero ``std``, which ``Normalize`` refuses) gets ``None``.
    """
    if not images or not all(isinstance(im, PILImage.Image) for im in images):
        return None
    first = images[0]
    if first.mode not in ("L", "RGB", "RGBA") or any((im.mode, im.size) != (first.mode, first.size) for im in images):
        return None
    dtype = torch.get_default_dtype()
    mean = torch.as_tensor(normalize.mean, dtype=dtype)
    std = torch.as_tensor(normalize.std, dtype=dtype)
    channels, (width, height) = len(first.getbands()), first.size
    if (std == 0).any() or mean.numel() not in (1, channels) or std.numel() not in (1, channels):
        return None
    mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    out = _new_batch_tensor((len(images), channels, height, width), dtype)
    for image, row in zip(images, out):
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(height, width, channels)
        row.copy_(pixels.permute(2, 0, 1))  # u8 -> float: exact
        row.div_(255).sub_(mean).div_(std)
    return list(out)


def _new_batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a data-loader worker in shared memory, as torch's ``default_collate`` does.

    A batch built in a worker is sent to the main process through shared memory: allocated there
    from the start, it is not copied again when it is sent.
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _row_name(batch: dict[str, list], k: int) -> str:
    """How to name row ``k`` of the batch in an error message."""
    if "row" in batch and "domain" in batch:
        domain = batch["domain"][k]
        name = {SOURCE: "source", TARGET: "target"}.get(domain, f"domain {domain}")
        return f"{name} row {batch['row'][k]}"
    return f"batch position {k} (build the dataset with jtln_hf.data.build_joint_dataset to get row numbers)"


def _decode(image: Any, batch: dict[str, list], k: int) -> Any:
    """Decode a ``datasets.Image(decode=False)`` value; raise naming the row if it is unreadable."""
    if not isinstance(image, dict):
        return image
    try:
        return datasets.Image().decode_example(image)
    except IMAGE_ERRORS as err:
        raise _unreadable(image, batch, k, err) from err


def _unreadable(image: Any, batch: dict[str, list], k: int, err: BaseException) -> ValueError:
    """The error of an image that cannot be decoded, naming its row, its path and the fix."""
    path = f" (path {image.get('path')!r})" if isinstance(image, dict) and image.get("path") else ""
    return ValueError(
        f"cannot decode the image of {_row_name(batch, k)}{path}: {type(err).__name__}: {err}. "
        "Remove or replace that row (e.g. ds.select([...]) without it); "
        "jtln_hf.data.check_images(ds, full_decode=True) lists every unreadable row."
    )


def _row_keys(batch: dict[str, list], images: list) -> list:
    """Stable identities of the batch's rows: ``(domain, row)``, else a hash of the pixels."""
    if "row" in batch and "domain" in batch:
        return [(int(d), int(r)) for d, r in zip(batch["domain"], batch["row"])]
    keys = []
    for image in images:
        if isinstance(image, PILImage.Image):
            raw = image.tobytes() + repr((image.mode, image.size)).encode()
        else:
            array = np.ascontiguousarray(np.asarray(image))
            raw = array.tobytes() + repr((array.dtype.str, array.shape)).encode()
        keys.append(hashlib.blake2b(raw, digest_size=16).hexdigest())
    return keys


@contextlib.contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Restore Python's, NumPy's (legacy) and torch's CPU generator states on exit."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def _seed_generators(batch_key: bytes, position: int) -> None:
    digest = hashlib.blake2b(batch_key + position.to_bytes(8, "little"), digest_size=8).digest()
    seed = int.from_bytes(digest, "little") & (2**63 - 1)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are left alone


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed rows into a batch of ``pixel_values``, ``labels`` and (if present) ``domain``.

    Rows that are, in order, the rows of one tensor (as :func:`make_batch_transform` writes them)
    give that tensor itself; other rows are stacked into a new one (in shared memory inside a
    data-loader worker).
    """
    batch = {"pixel_values": _stacked([r["pixel_values"] for r in rows])}
    if "labels" in rows[0]:
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
    if "domain" in rows[0]:
        batch["domain"] = torch.tensor([r["domain"] for r in rows], dtype=torch.long)
    if BAD_IMAGES_KEY in rows[0]:
        batch[BAD_IMAGES_KEY] = [record for r in rows for record in r[BAD_IMAGES_KEY]]
    return batch


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``; without a copy when they are the consecutive rows of one contiguous tensor."""
    first = tensors[0]
    if first.device.type != "cpu":
        return torch.stack(tensors)
    storage, numel = first.untyped_storage(), first.numel()
    if storage.nbytes() == len(tensors) * numel * first.element_size() and all(
        t.is_contiguous() and t.shape == first.shape and t.dtype == first.dtype
        and t.untyped_storage().data_ptr() == storage.data_ptr() and t.storage_offset() == k * numel
        for k, t in enumerate(tensors)
    ):  # fmt: skip
        return torch.empty(0, dtype=first.dtype).set_(storage, 0, (len(tensors), *first.shape))
    return torch.stack(tensors, out=_new_batch_tensor((len(tensors), *first.shape), first.dtype))
