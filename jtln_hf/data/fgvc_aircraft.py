"""FGVC-Aircraft (Maji et al., 2013) from the official archive, as a ``datasets.Dataset``.

The fine-grained benchmark of the JTLN paper: 10,000 aircraft photos labelled at three levels
(100 variants, 70 families, 30 manufacturers). The paper's splits take one manufacturer's
variants as the target task and the other variants as the source task
(``recipes/configs/fgvc_aircraft_boeing.yaml``, ``recipes/configs/fgvc_aircraft_airbus.yaml``).
:func:`load_fgvc_aircraft` reads the layout of ``fgvc-aircraft-2013b.tar.gz`` once extracted::

    fgvc-aircraft-2013b/data/images/<id>.jpg
    fgvc-aircraft-2013b/data/images_{variant,family,manufacturer}_{train,val,trainval,test}.txt
    fgvc-aircraft-2013b/data/{variants,families,manufacturers}.txt

Each ``images_<level>_<split>.txt`` line is ``"<id> <class name>"`` (names may hold spaces and
slashes, e.g. ``"Boeing 717"``, ``"F/A-18"``); the three class lists hold one name per line. The
``ClassLabel`` names are these full lists in file order, so a label id means the same class in
every split, whether or not the split holds images of it.

The copyright banner
--------------------
The bottom :data:`BANNER_HEIGHT` (20) pixel rows of every image hold a copyright banner, which the
dataset's authors ask users to remove. It is cropped off *before* the image is stored in the
Arrow cache, not at read time: the rest of the package decodes images itself
(:func:`jtln_hf.data.build_joint_dataset` stores them undecoded and
:func:`jtln_hf.data.make_batch_transform` decodes them), so a crop kept in a format transform or
applied when a path-only column is decoded would be dropped by ``select``/``filter``/``cast``
and the banner would reach training silently.

Cropping a JPEG means re-encoding it (Pillow has no lossless JPEG crop): each image is re-encoded
with *its own* quantization tables and chroma subsampling, at an unchanged 8x8 block grid, so the
coefficients re-quantize to almost the same values (docs/design.md, "FGVC-Aircraft"). Disk cost: a split's Arrow
cache is about as large as its JPEGs in the archive; ``trainval`` + ``test`` hold all 10,000
images (about the archive's 2.7 GB), and ``train``/``val``, subsets of ``trainval``, add their
images again if they are built too. Building a split decodes and encodes every image once
(minutes on one core; ``num_proc`` spreads it over processes); later calls load the Arrow cache
(``cache_dir`` chooses where it lives). The cache is keyed by the split's image paths and labels,
not by the pixels: after replacing images in place, clear the cache or pass a new ``cache_dir``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
from PIL import Image as PILImage
from PIL import JpegImagePlugin

from .known import KnownDataset, register_known_dataset

#: The dataset spec (``--dataset fgvc-aircraft``, with ``--dataset_root``).
FGVC_AIRCRAFT = "fgvc-aircraft"

#: The folder the archive ``fgvc-aircraft-2013b.tar.gz`` extracts to.
ARCHIVE_DIR = "fgvc-aircraft-2013b"
SPLITS = ("train", "val", "trainval", "test")
#: Annotation levels, finest first, and the file listing each level's classes.
CLASS_LIST_FILES = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
#: Pixel rows of copyright banner at the bottom of every image (removed on loading).
BANNER_HEIGHT = 20
#: JPEG quality for an image that does not come as a JPEG (none in the official archive).
FALLBACK_JPEG_QUALITY = 95

_FIX = (
    "download it with load_fgvc_aircraft(root, download=True) (needs the network; first delete an "
    f"incomplete {ARCHIVE_DIR} folder), or pass the folder that holds {ARCHIVE_DIR} (or that folder itself)"
)


def load_fgvc_aircraft(
    root: str | os.PathLike[str],
    split: str = "trainval",
    *,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """One split of FGVC-Aircraft, banner removed, as a ``datasets.Dataset``.

    Parameters
    ----------
    root
        The extracted ``fgvc-aircraft-2013b`` folder, or a folder holding it (as
        ``torchvision.datasets.FGVCAircraft(root, download=True)`` leaves it).
    split
        ``"train"``, ``"val"``, ``"trainval"`` (train + val, the paper's training set) or ``"test"``.
    download
        When ``root`` holds no archive yet, fetch ``fgvc-aircraft-2013b.tar.gz`` (about 2.7 GB, needs
        the network) into ``root`` with ``torchvision.datasets.FGVCAircraft``, extract it there and
        delete the downloaded tarball.
    cache_dir
        Where the Arrow cache is written (default: the ``datasets`` cache, ``HF_DATASETS_CACHE``).
    num_proc
        Processes that decode, crop and re-encode the images on the first build.

    Returns
    -------
    datasets.Dataset
        Rows in the order of ``images_variant_<split>.txt``, with columns ``image``
        (``datasets.Image``, a JPEG without the bottom :data:`BANNER_HEIGHT` rows) and ``variant``,
        ``family``, ``manufacturer`` (``datasets.ClassLabel`` named by the full class lists, so
        ids agree across splits). Each image's ``path`` is ``"<id>.jpg"`` (its bytes are stored).

    Raises
    ------
    ValueError
        For an unknown split; a malformed annotation line, an unknown or repeated class name or
        image id; annotation files of one split that list different images; an image that cannot
        be read (with ``num_proc``, the ``datasets.exceptions.DatasetGenerationError`` of the worker).
    FileNotFoundError
        When ``root`` holds no archive (and ``download`` is false), or a file of the archive or an
        image listed for the split is missing.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    root = Path(root).expanduser().absolute()
    archive = _find_archive(root)
    if archive is None and download:
        from torchvision.datasets import FGVCAircraft  # fetches and extracts into root/fgvc-aircraft-2013b

        tarball = root / f"{ARCHIVE_DIR}.tar.gz"
        had_tarball = tarball.exists()
        FGVCAircraft(root, split=split, download=True)
        archive = _find_archive(root)
        if archive is not None and not had_tarball:
            tarball.unlink(missing_ok=True)  # extracted: 2.7 GB less on disk
    if archive is None:
        raise FileNotFoundError(
            f"no FGVC-Aircraft archive at {root}: neither {root / 'data'} nor {root / ARCHIVE_DIR / 'data'} "
            f"exists: {_FIX}."
        )
    data = archive / "data"
    class_names = {level: _read_class_list(data / name) for level, name in CLASS_LIST_FILES.items()}
    labels = {
        level: _read_labels(data / f"images_{level}_{split}.txt", data / CLASS_LIST_FILES[level], class_names[level])
        for level in CLASS_LIST_FILES
    }
    _check_same_images(labels, data, split)
    rows = [
        (str(data / "images" / f"{i}.jpg"), variant, labels["family"][i], labels["manufacturer"][i])
        for i, variant in labels["variant"].items()
    ]
    missing = [path for path, *_ in rows if not os.path.isfile(path)]
    if missing:
        shown = ", ".join(missing[:3]) + (f", ... ({len(missing)} in all)" if len(missing) > 3 else "")
        raise FileNotFoundError(
            f"{len(missing)} image(s) listed in {data / f'images_variant_{split}.txt'} are missing: {shown}. "
            f"The archive is incomplete: {_FIX}."
        )
    features = datasets.Features(
        {"image": datasets.Image(), **{level: datasets.ClassLabel(names=names) for level, names in class_names.items()}}
    )
    try:
        return datasets.Dataset.from_generator(
            _fgvc_aircraft_rows,
            features=features,
            cache_dir=None if cache_dir is None else str(cache_dir),
            gen_kwargs={"rows": rows, "banner_height": BANNER_HEIGHT},
            num_proc=num_proc,
            split=datasets.NamedSplit(split),
        )
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, ValueError):  # an unreadable image: say which, not "an error occurred"
            raise ValueError(f"{err.__cause__} The archive is damaged: {_FIX}.") from err
        raise


def _find_archive(root: Path) -> Path | None:
    """``root`` if it is the extracted archive, ``root/fgvc-aircraft-2013b`` if that is, else ``None``."""
    for folder in (root, root / ARCHIVE_DIR):
        if (folder / "data").is_dir():
            return folder
    return None


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of every non-blank line of ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the FGVC-Aircraft archive is incomplete; {_FIX}.")
    with open(path, encoding="utf-8") as f:
        return [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip()]


def _read_class_list(path: Path) -> list[str]:
    """The class names of one level (``variants.txt``, ...), one per line, in file order."""
    names = [name for _, name in _read_lines(path)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path} names {repeated} more than once: class names must be unique.")
    if not names:
        raise ValueError(f"{path} lists no class: the FGVC-Aircraft archive is damaged; {_FIX}.")
    return names


def _read_labels(path: Path, classes_path: Path, names: Sequence[str]) -> dict[str, int]:
    """``{image id: class id}`` of one ``images_<level>_<split>.txt``, in file order."""
    index = {name: i for i, name in enumerate(names)}
    labels: dict[str, int] = {}
    for n, line in _read_lines(path):
        image_id, _, name = line.partition(" ")
        name = name.strip()
        if not name:
            raise ValueError(f"{path}, line {n}: expected '<image id> <class name>', got {line!r}.")
        if name not in index:
            raise ValueError(f"{path}, line {n}: class {name!r} is not listed in {classes_path}.")
        if image_id in labels:
            raise ValueError(f"{path}, line {n}: image {image_id!r} is listed twice.")
        labels[image_id] = index[name]
    return labels


def _check_same_images(labels: dict[str, dict[str, int]], data: Path, split: str) -> None:
    """The three annotation files of a split must label the same image ids."""
    reference = set(labels["variant"])
    for level in ("family", "manufacturer"):
        ids = set(labels[level])
        if ids != reference:
            only_variant, only_level = sorted(reference - ids), sorted(ids - reference)
            raise ValueError(
                f"{data / f'images_variant_{split}.txt'} and {data / f'images_{level}_{split}.txt'} label "
                f"different images: {len(only_variant)} id(s) only in the first (e.g. {only_variant[:3]}), "
                f"{len(only_level)} only in the second (e.g. {only_level[:3]}), so the archive is damaged: {_FIX}."
            )


def _fgvc_aircraft_rows(rows: list[tuple[str, int, int, int]], banner_height: int) -> Iterator[dict[str, Any]]:
    for path, variant, family, manufacturer in rows:
        yield {
            "image": {"bytes": crop_banner(path, banner_height), "path": Path(path).name},
            "variant": variant,
            "family": family,
            "manufacturer": manufacturer,
        }


def crop_banner(path: str | os.PathLike[str], banner_height: int = BANNER_HEIGHT) -> bytes:
    """The image at ``path`` without its bottom ``banner_height`` rows, as JPEG bytes.

    A JPEG is re-encoded with its own quantization tables, chroma subsampling and ICC profile
    (see the module docstring for why); anything else at quality :data:`FALLBACK_JPEG_QUALITY`.

    Parameters
    ----------
    path
        An image file, e.g. ``fgvc-aircraft-2013b/data/images/0034309.jpg``.
    banner_height
        Pixel rows cut off at the bottom.

    Returns
    -------
    bytes
        The cropped image, JPEG-encoded.

    Raises
    ------
    ValueError
        When the image is not taller than ``banner_height`` or cannot be read.
    """
    try:
        with PILImage.open(path) as image:
            width, height = image.size
            if height <= banner_height:
                raise ValueError(
                    f"{path} is {width}x{height} pixels: not taller than the {banner_height}-row banner to remove."
                )
            if image.format == "JPEG" and getattr(image, "quantization", None):
                settings = {"qtables": image.quantization, "subsampling": JpegImagePlugin.get_sampling(image)}
            else:
                settings = {"quality": FALLBACK_JPEG_QUALITY}
            if image.info.get("icc_profile"):
                settings["icc_profile"] = image.info["icc_profile"]
            cropped = image.crop((0, 0, width, height - banner_height))
    except (OSError, SyntaxError, EOFError, PILImage.DecompressionBombError) as err:
        raise ValueError(f"cannot read the image {path}: {type(err).__name__}: {err}.") from err
    if cropped.mode not in ("L", "RGB", "CMYK"):  # JPEGs open as one of these: only other formats convert
        cropped = cropped.convert("RGB")
    out = io.BytesIO()
    cropped.save(out, format="JPEG", **settings)
    return out.getvalue()


def _open_fgvc_aircraft(root: str | None, splits: Sequence[str] | None) -> datasets.DatasetDict:
    if not root:
        raise ValueError(
            "--dataset fgvc-aircraft needs --dataset_root DIR: the folder holding fgvc-aircraft-2013b "
            "(jtln_hf.data.fgvc_aircraft.load_fgvc_aircraft(DIR, download=True) fetches it)."
        )
    known = ("train", "val", "trainval", "test")
    wanted = [s for s in dict.fromkeys(splits or known) if s in known]  # each split is built on first use
    return datasets.DatasetDict({s: load_fgvc_aircraft(root, s) for s in wanted})


register_known_dataset(KnownDataset(FGVC_AIRCRAFT, _open_fgvc_aircraft))
