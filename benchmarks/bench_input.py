#!/usr/bin/env python
"""Images/s of the training data path against timm's own loader, alternated in one run.

Both read the same JPEG ImageFolder (realistic photos at 375 x 500, written once and cached under
``--cache_dir``: random crops, flips and recolourings of scikit-learn's two sample photos, JPEG
quality 90) and apply the same augmentation, timm's ``create_transform(224, is_training=True)``
(RandomResizedCrop 224, hflip 0.5, colour jitter 0.4, ToTensor, Normalize), with the same
workers, batch size, persistent workers and prefetch factor:

* ``ours``: the folder loaded with ``datasets`` as both source and target,
  ``jtln_hf.data.build_joint_dataset``, ``make_batch_transform`` (seeded per-image augmentation),
  ``PairedBatchSampler`` and ``collate``, in a DataLoader built as ``JTLNTrainer`` builds its own;
* ``timm``: ``timm.data.create_loader`` on ``timm.data.create_dataset`` of the same folder
  (``use_prefetcher=False``: normalised float batches on the host, as ours).

Each round runs ``--batches`` batches of each loader (one epoch of each: timm's dataset is cut to
``batches x batch`` images and our sampler to ``--batches`` batches, so no loader has work in flight
while the other is timed), loaders alternated, and prints images/s and the ratio ours / timm; the
summary gives the median ratio over rounds with its range. The first round warms both up and is
not counted.

    python benchmarks/bench_input.py                         # 2 workers, batch 64, 5 rounds
    python benchmarks/bench_input.py --workers 0 --profile   # cProfile of our path in this process

``--ours stream`` measures the streamed path instead: the folder's images written once as
``--shards`` parquet shards and streamed as the source (``jtln_hf.data.stream.PairedStream``,
``streaming_dataloader``), the map-style folder as the target; ``OUR_PATHS`` maps ``--ours`` to the builder of our loader.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

HEIGHT, WIDTH = 375, 500  # the default --photo_size
TILE_HEIGHT, TILE_WIDTH = 300, 400  # the tiles of a photo larger than the sample photos (427 x 640)


def _photo(photos: list[np.ndarray], i: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A ``height x width`` crop of sample photo ``i % 2``; a larger size is a mosaic of such crops at the photos'
    own resolution (not an upsampled photo, whose smooth pixels would decode faster than a real one's)."""
    photo = photos[i % len(photos)]
    if height <= photo.shape[0] and width <= photo.shape[1]:
        top = rng.integers(0, photo.shape[0] - height + 1)
        left = rng.integers(0, photo.shape[1] - width + 1)
        return photo[top : top + height, left : left + width]
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, TILE_HEIGHT):
        for left in range(0, width, TILE_WIDTH):
            h, w = min(TILE_HEIGHT, height - top), min(TILE_WIDTH, width - left)
            out[top : top + h, left : left + w] = _photo(photos, i + top + left, h, w, rng)
    return out


# ------------------------------------------------------------------------------------------ folder
def write_folder(root: Path, images: int, classes: int, seed: int = 0, height: int = HEIGHT,
                 width: int = WIDTH) -> Path:  # fmt: skip
    """A JPEG ImageFolder ``root/train/<class>/*.jpg`` of ``images`` photos at ``height x width``, written once."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = root / f"photos-{images}x{classes}-{height}x{width}"
    done = folder / ".complete"
    if done.exists():
        return folder
    photos = [np.asarray(p) for p in load_sample_images().images]  # china.jpg, flower.jpg: 427 x 640 RGB
    rng = np.random.default_rng(seed)
    for i in range(images):
        crop = _photo(photos, i, height, width, rng).astype(np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        gains = rng.uniform(0.7, 1.3, size=3)  # recolour: per-channel gain and a gamma
        crop = 255.0 * (np.clip(crop * gains, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
        label = i % classes
        out = folder / "train" / f"class{label:02d}"
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop.round().astype(np.uint8)).save(out / f"{i:05d}.jpg", quality=90)
    done.touch()
    return folder


def write_shards(folder: Path, shards: int) -> str:
    """The folder's images (bytes embedded) as ``shards`` parquet files beside it, written once: a streamed source."""
    import datasets

    out = folder.with_name(f"{folder.name}-parquet{shards}")
    if not (out / ".complete").exists():
        files = sorted((folder / "train").glob("*/*.jpg"))
        names = sorted({f.parent.name for f in files})
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        out.mkdir(parents=True, exist_ok=True)
        for s in range(shards):
            part = files[s::shards]
            rows = {"image": [{"bytes": f.read_bytes(), "path": None} for f in part],
                    "label": [names.index(f.parent.name) for f in part]}  # fmt: skip
            datasets.Dataset.from_dict(rows, features=features).to_parquet(str(out / f"part-{s:02d}.parquet"))
        (out / ".complete").touch()
    return str(out / "*.parquet")


# ------------------------------------------------------------------------------------------ loaders
class FirstBatches(Sampler[list[int]]):
    """The first ``n`` batches of each epoch of ``batch_sampler`` (the epoch advances with :meth:`set_epoch`)."""

    def __init__(self, batch_sampler, n: int) -> None:
        self.batch_sampler, self.n = batch_sampler, n

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.n)


def loader_kwargs(args) -> dict:
    """What both loaders share (timm's create_loader names them the same)."""
    kwargs = {"num_workers": args.workers, "pin_memory": False}
    if args.workers:
        kwargs.update(persistent_workers=True, prefetch_factor=args.prefetch)
    return kwargs


def ours_map(args, folder: Path, transform):
    """The training data path, map-style: ``datasets`` ImageFolder -> joint dataset -> sampler -> DataLoader."""
    import datasets
    from transformers.trainer_utils import seed_worker

    from jtln_hf.data import PairedBatchSampler, build_joint_dataset, collate, make_batch_transform

    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train",
                               cache_dir=str(Path(args.cache_dir) / "hf-datasets"))  # fmt: skip
    joint = build_joint_dataset(ds, ds).with_transform(make_batch_transform(transform, in_chans=3, seed=0,
                                                                            crop_scale=args.crop_scale))  # fmt: skip
    sampler = FirstBatches(PairedBatchSampler(joint["domain"], batch_size=args.batch, seed=0), args.batches)
    return DataLoader(joint, batch_sampler=sampler, collate_fn=collate,
                      worker_init_fn=lambda worker_id: seed_worker(worker_id, args.workers, 0),
                      **loader_kwargs(args))  # fmt: skip


def ours_stream(args, folder: Path, transform):
    """The streamed path: the folder streamed as the source (``PairedStream``), read as a map-style target."""
    import datasets

    from jtln_hf.data import make_batch_transform
    from jtln_hf.data.stream import PairedStream
    from jtln_hf.data.stream_loader import streaming_dataloader
    from jtln_hf.data.stream_source import open_streaming_source

    class FirstStreamBatches(PairedStream):
        """``--batches`` batches per epoch of the loader, split over the workers; each worker's stream goes on
        where it stopped (persistent workers keep it), so no round refills the shuffle buffer."""

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
            if getattr(self, "_rows", None) is None:
                self._rows = super().__iter__()
            return itertools.islice(self._rows, args.batches // workers + (worker < args.batches % workers))

    target = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train",
                                   cache_dir=str(Path(args.cache_dir) / "hf-datasets"))  # fmt: skip
    stream = FirstStreamBatches(open_streaming_source(write_shards(folder, args.shards)), target, n_source=args.batch // 2,
                                n_target=args.batch - args.batch // 2, seed=0, buffer_size=args.buffer,
                                transform=make_batch_transform(transform, in_chans=3, seed=0,
                                                               crop_scale=args.crop_scale))  # fmt: skip
    kwargs = loader_kwargs(args)
    return streaming_dataloader(stream, num_workers=kwargs["num_workers"], prefetch_factor=kwargs.get("prefetch_factor"),
                                persistent_workers=kwargs.get("persistent_workers", False))  # fmt: skip


#: Our loaders by ``--ours``: map-style (the trainer's) and streamed (``PairedStream``).
OUR_PATHS = {"map": ours_map, "stream": ours_stream}


def timm_loader(args, folder: Path):
    """``timm.data.create_loader`` on the folder, cut to ``batches x batch`` images (one epoch = ``--batches``)."""
    import timm.data

    dataset = timm.data.create_dataset("", root=str(folder / "train"), is_training=True)
    keep = np.random.default_rng(0).permutation(len(dataset.reader.samples))[: args.batches * args.batch]
    dataset.reader.samples = [dataset.reader.samples[i] for i in sorted(keep)]
    kwargs = loader_kwargs(args)
    kwargs.pop("prefetch_factor", None)  # create_loader does not take it: torch's default, 2
    return timm.data.create_loader(dataset, input_size=(3, 224, 224), batch_size=args.batch, is_training=True,
                                   use_prefetcher=False, device=torch.device("cpu"), **kwargs)  # fmt: skip


# --------------------------------------------------------------------------------------- measuring
def epoch_images_per_s(loader, epoch: int) -> tuple[float, float]:
    """Images per second of one epoch (from ``iter`` to the last batch), by the wall clock and by this process's CPU time.

    The second is the per-core rate with ``--workers 0`` (everything runs in this process), whatever
    else the machine runs; with workers it counts only the waiting main process.
    """
    sampler = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    start, cpu, images = time.perf_counter(), time.process_time(), 0
    for batch in loader:
        images += len(batch["pixel_values"] if isinstance(batch, dict) else batch[0])
    return images / (time.perf_counter() - start), images / max(time.process_time() - cpu, 1e-9)


def profile_ours(loader, top: int) -> None:
    """cProfile one epoch of our path (``--workers 0``: everything runs in this process)."""
    profiler = cProfile.Profile()
    profiler.enable()
    rate = epoch_images_per_s(loader, 0)[0]
    profiler.disable()
    print(f"ours: {rate:.1f} images/s under cProfile")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit images, in dB: ``10 log10(255^2 / mean((a - b)^2))``."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def crop_quality(folder: Path, data_config: dict, n: int) -> None:
    """PSNR of crops decoded at their crop's scale (``jtln_hf.data.decode``) against the full decode + timm's step.

    Training: timm's ``RandomResizedCropAndInterpolation`` (scale 0.08-1) on the full decode against ours on the
    JPEG, the same box (``random`` seeded alike for both); evaluation: Resize(256) + CenterCrop(224) likewise.
    ``n`` images of the folder, one training crop and the evaluation crop each.
    """
    import random

    from PIL import Image

    from jtln_hf.data import build_transform
    from jtln_hf.data.decode import crop_scale_step, dct_scale

    files = sorted((folder / "train").glob("*/*.jpg"))[:n]
    for training in (True, False):
        transform = build_transform({**data_config, "crop_pct": 0.875}, training=training)
        steps, (first, _) = transform.transforms, crop_scale_step(transform, "RGB")
        full = steps[0] if training else (lambda im: steps[1](steps[0](im)))
        values, scales = [], []
        for k, path in enumerate(files):
            raw = {"bytes": path.read_bytes(), "path": None}
            random.seed(k)
            ours = np.asarray(first(raw))
            random.seed(k)
            decoded = Image.open(path).convert("RGB")
            if training:  # the scale ours used for this box
                i, j, h, w = steps[0].get_params(decoded, steps[0].scale, steps[0].ratio)
                scales.append(dct_scale((w, h), (224, 224)))
                random.seed(k)
            theirs = np.asarray(full(decoded))
            values.append(psnr(ours, theirs))
        values = np.array(values)
        name = "training (RandomResizedCrop)" if training else "evaluation (Resize 256 + CenterCrop 224)"
        shares = {s: scales.count(s) / len(scales) for s in sorted(set(scales))} if scales else {}
        finite = values[np.isfinite(values)]
        stats = (f"PSNR dB min {finite.min():.1f}, 5th percentile {np.percentile(finite, 5):.1f}, median "
                 f"{np.median(finite):.1f}, max {finite.max():.1f}" if finite.size else "no crop differs")  # fmt: skip
        print(f"{name}: {len(values)} crops, {len(values) - finite.size} identical to the full decode's; {stats}"
              + (f"; DCT scale shares {shares}" if shares else ""))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="data-loader workers of each loader")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, after one warm-up round")
    parser.add_argument("--batches", type=int, default=16, help="batches per loader and round")
    parser.add_argument("--prefetch", type=int, default=2, help="prefetch factor (workers > 0)")
    parser.add_argument("--images", type=int, default=2000, help="images in the folder")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "jtln-bench-input"),
                        help="where the folder (and the datasets cache) is written once")  # fmt: skip
    parser.add_argument("--ours", choices=sorted(OUR_PATHS), default="map", help="our data path")
    parser.add_argument("--buffer", type=int, default=1000, help="shuffle buffer of the streamed source (rows per worker)")
    parser.add_argument("--shards", type=int, default=4, help="parquet shards of the streamed source")
    parser.add_argument("--profile", action="store_true", help="cProfile one epoch of ours, then stop")
    parser.add_argument("--photo_size", default=f"{WIDTH}x{HEIGHT}", help="WIDTHxHEIGHT of the folder's photos")
    parser.add_argument("--full_decode", dest="crop_scale", action="store_false",
                        help="ours decodes every JPEG fully (--decode_at_crop_scale false), as before")
    parser.add_argument("--whole_rows", action="store_true",
                        help="ours decodes a JPEG's rows below its crop's box too (as before the row stop)")
    parser.add_argument("--psnr", type=int, default=0, metavar="N",
                        help="instead of timing: the PSNR of N crops decoded at the crop's scale against full decodes")
    args = parser.parse_args()
    width, height = map(int, args.photo_size.lower().split("x"))
    if args.batches * args.batch > args.images:
        parser.error(f"--batches x --batch = {args.batches * args.batch} exceeds --images {args.images}: "
                     "raise --images or lower --batches.")  # fmt: skip
    torch.set_num_threads(1)  # the workers use one thread each (torch sets it); the main process only waits

    import timm.data

    from jtln_hf.data import build_transform

    folder = write_folder(Path(args.cache_dir), args.images, args.classes, height=height, width=width)
    if args.whole_rows:  # before the loaders exist: their workers fork from this process
        from jtln_hf.data import decode

        decode._through_box = lambda image, raw, last_row: image
    # create_transform(224, is_training=True)'s own defaults, which create_loader also uses
    data_config = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": timm.data.IMAGENET_DEFAULT_MEAN,
                   "std": timm.data.IMAGENET_DEFAULT_STD}  # fmt: skip
    transform = build_transform(data_config, training=True)
    if args.psnr:
        crop_quality(folder, data_config, args.psnr)
        return
    ours = OUR_PATHS[args.ours](args, folder, transform)
    if args.profile:
        profile_ours(ours, top=25)
        return
    theirs = timm_loader(args, folder)
    if repr(theirs.dataset.transform) != repr(transform):
        raise SystemExit(f"the augmentations differ:\nours {transform}\ntimm {theirs.dataset.transform}")
    print(f"folder {folder} | workers {args.workers} | batch {args.batch} | {args.batches} batches per loader "
          f"and round | prefetch {args.prefetch} | transform: {transform}")  # fmt: skip
    ratios, rates, cpu_rates = [], {"ours": [], "timm": []}, {"ours": [], "timm": []}
    for r in range(args.rounds + 1):
        order = [("ours", ours), ("timm", theirs)] if r % 2 else [("timm", theirs), ("ours", ours)]
        now = {name: epoch_images_per_s(loader, r) for name, loader in order}
        if r == 0:
            print(f"warm-up: ours {now['ours'][0]:.1f}, timm {now['timm'][0]:.1f} images/s")
            continue
        for name in rates:
            rates[name].append(now[name][0])
            cpu_rates[name].append(now[name][1])
        ratios.append(now["ours"][0] / now["timm"][0])
        print(f"round {r}: ours {now['ours'][0]:.1f}, timm {now['timm'][0]:.1f} images/s, ours/timm {ratios[-1]:.3f}")
    print(f"median over {args.rounds} rounds: ours {statistics.median(rates['ours']):.1f}, "
          f"timm {statistics.median(rates['timm']):.1f} images/s; ours/timm {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip
    if not args.workers:
        print(f"per core (images per CPU-second of this process, median): ours {statistics.median(cpu_rates['ours']):.1f}, "
              f"timm {statistics.median(cpu_rates['timm']):.1f}")  # fmt: skip

if __name__ == "__main__":
    main()
