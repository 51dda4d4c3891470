"""jtln_hf.data.checks: a passed image check is remembered on disk beside the table ``datasets`` cached, and only there.

The tables are written here: PNG bytes in a parquet file, loaded with ``datasets.load_dataset`` into a
temporary cache and mapped once, so that ``datasets`` stores them as ``cache-<fingerprint>.arrow``, as it
stores the Fashion-MNIST splits. "Read no image" is asserted by making the per-image check raise.
"""

from __future__ import annotations

import io

import datasets
import pytest
from PIL import Image

from jtln_hf.data import checks


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), value).save(out, format="PNG")
    return out.getvalue()


def _cached_table(tmp_path, images: list[dict] | None, name: str = "t") -> datasets.Dataset:
    """The table of ``images`` written to parquet, loaded and mapped; ``images=None``: the file written before."""
    if images is not None:
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
        datasets.Dataset.from_dict({"image": images, "label": list(range(len(images)))}, features=features).to_parquet(
            str(tmp_path / f"{name}.parquet"))  # fmt: skip
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / f"{name}.parquet"), split="train",
                                   cache_dir=str(tmp_path / "cache"))  # fmt: skip
    return loaded.map(lambda labels: {"label": labels}, input_columns="label", batched=True)


@pytest.fixture(autouse=True)
def new_process(monkeypatch):
    """Each test starts as a new process would: nothing checked in memory."""
    monkeypatch.setattr(checks, "_CHECKED", set())


def _no_image_read(monkeypatch):
    def refuse(value, full):
        raise AssertionError("an image was read")

    monkeypatch.setattr(checks, "_image_problem", refuse)


def test_a_passed_check_is_not_repeated_by_a_later_process(tmp_path, monkeypatch):
    ds = _cached_table(tmp_path, [{"bytes": _png(v), "path": None} for v in range(5)])
    marker = checks.passed_check_marker(ds, full=True)
    assert marker == tmp_path / "cache" / marker.relative_to(tmp_path / "cache")  # in the datasets cache
    assert (marker.parent / f"cache-{ds._fingerprint}.arrow").is_file() and not marker.exists()
    checks.check_images(ds, "the target dataset")
    assert marker.read_text() == checks._MARKER_TEXT
    monkeypatch.setattr(checks, "_CHECKED", set())  # a later process loads the same file: the same fingerprint
    again = _cached_table(tmp_path, None)
    assert again._fingerprint == ds._fingerprint
    _no_image_read(monkeypatch)
    checks.check_images(again, "the target dataset")
    # a header check is another check: its own marker, not the decoded one's
    with pytest.raises(AssertionError, match="an image was read"):
        checks.check_images(again, "the target dataset", full_decode=False)


def test_a_failed_check_leaves_no_marker_and_fails_again(tmp_path):
    ds = _cached_table(tmp_path, [{"bytes": _png(1), "path": None}, {"bytes": b"not an image", "path": None}])
    for _ in range(2):
        with pytest.raises(ValueError, match=r"1 image\(s\) that cannot be read \(row 1: UnidentifiedImageError"):
            checks.check_images(ds, "the target dataset")
        assert not checks.passed_check_marker(ds, full=True).exists()


def test_images_stored_as_paths_are_checked_every_time(tmp_path, monkeypatch):
    """A file can change under its path without the table's fingerprint changing: no marker for such a table."""
    paths = []
    for v in range(3):
        paths.append(tmp_path / f"{v}.png")
        paths[-1].write_bytes(_png(v))
    ds = _cached_table(tmp_path, [{"bytes": None, "path": str(p)} for p in paths])
    assert ds.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"] is None  # paths, not bytes
    checks.check_images(ds, "the target dataset")
    assert not checks.passed_check_marker(ds, full=True).exists()
    paths[1].write_bytes(b"replaced by something else")
    monkeypatch.setattr(checks, "_CHECKED", set())
    with pytest.raises(ValueError, match=r"row 1: UnidentifiedImageError"):
        checks.check_images(ds, "the target dataset")


def test_no_marker_where_the_fingerprint_names_no_cache_file(tmp_path):
    """In memory, or a selection of a cached table (the file is its parent's): nothing on disk to vouch for it."""
    images = [{"bytes": _png(v), "path": None} for v in range(4)]
    in_memory = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]},
                                           features=datasets.Features({"image": datasets.Image(),
                                                                       "label": datasets.Value("int64")}))  # fmt: skip
    assert in_memory.cache_files == [] and checks.passed_check_marker(in_memory, full=True) is None
    selection = _cached_table(tmp_path, images).select([0, 2])
    assert selection.cache_files and checks.passed_check_marker(selection, full=True) is None
    checks.check_images(selection, "the target dataset")  # still checked, in memory only
    assert not list((tmp_path / "cache").rglob("jtln-images-ok-*"))


def test_a_marker_written_under_another_pillow_is_checked_again(tmp_path, monkeypatch):
    ds = _cached_table(tmp_path, [{"bytes": _png(v), "path": None} for v in range(3)])
    checks.passed_check_marker(ds, full=True).write_text("Pillow 0.0\n")
    _no_image_read(monkeypatch)
    with pytest.raises(AssertionError, match="an image was read"):
        checks.check_images(ds, "the target dataset")
