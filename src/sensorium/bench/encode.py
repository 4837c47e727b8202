"""Filling the feature cache: images/s by DataLoader workers, and where the time goes.

Decoding + preprocessing runs in DataLoader workers so that it overlaps the encoder's forward; the
split between the two, timed apart on the same images, says how much overlap can gain.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..cache import FeatureCache, _Decode
from ..data import read_dataset
from ..encoders import Encoder, load_encoder
from ..recipe import TrainingOptions
from .common import Timer, add_common_arguments, print_table, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--images", type=int, default=256, help="distinct easy-vqa test images to encode")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=TrainingOptions.cache_batch_size,
                        help="images per encoder forward")


def image_paths(count: int, limit: int | None) -> list[str]:
    """Distinct image files: the cache encodes each content once, so repeated files would not be timed."""
    media = dict.fromkeys(e.media for e in read_dataset({"format": "easy-vqa", "split": "test", "limit": limit}))
    return list(media)[:count]


def fill(encoder: Encoder, paths: list[str], batch_size: int, workers: int) -> None:
    """One complete fill of an empty cache, as training's first run does it."""
    with tempfile.TemporaryDirectory() as root:
        FeatureCache(encoder, root=Path(root)).features(paths, batch_size, workers)


def split_time(encoder: Encoder, paths: list[str], batch_size: int, timer: Timer) -> dict[str, float]:
    """Seconds for decoding + preprocessing all images, and for the encoder's forward over them, apart."""
    decode = _Decode(encoder)
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    device = next(encoder.parameters()).device
    pixels = [decode(chunk)[1].to(device) for chunk in chunks]

    def forward() -> None:
        with torch.inference_mode():
            for batch in pixels:
                encoder(batch)

    return {"decode": timer.median(lambda: [decode(chunk) for chunk in chunks]), "forward": timer.median(forward)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    encoder = load_encoder(args.encoder, image_size=args.image_size).to(args.device)
    paths = image_paths(args.images, args.limit)
    timer = Timer(args.device, args.repeats, args.warmup)
    fills = {workers: timer.median(lambda w=workers: fill(encoder, paths, args.batch_size, w))
             for workers in args.workers}
    split = split_time(encoder, paths, args.batch_size, timer)
    rows = [{"workers": workers, "fill_s": seconds, "images_per_s": len(paths) / seconds,
             "speedup_over_first": fills[args.workers[0]] / seconds} for workers, seconds in fills.items()]
    share = split["decode"] / (split["decode"] + split["forward"])
    print_table(rows, f"feature cache fill, {len(paths)} images")
    print_table([{"decode+preprocess s": split["decode"], "encoder forward s": split["forward"],
                  "decode share": share}], "time split")
    return record("encode", args, {"images": len(paths), "rows": rows, "decode_s": split["decode"],
                                   "forward_s": split["forward"], "decode_share": share})
