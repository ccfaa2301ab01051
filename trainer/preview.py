"""`trainer preview CATALOGUE --out sheet.png [--views N --seed S]`: a grid with
one row per photo, the clean view first and then N distorted views, to see
what the training distortions look like before spending CPU hours on them."""

from __future__ import annotations

import argparse

import numpy as np

from models.catalogue import load_catalogue
from models.errors import ConfigError
from models.netconfig import LITE0_INPUT
from models.preprocess import PreprocessSpec
from trainer.data import cache_scale_for, load_image_set
from trainer.distort import (
    DEFAULT_KIOSK,
    DEFAULT_MIN_AREA,
    check_min_area,
    check_share,
    clean_view,
    distort_seeded,
)
from trainer.sheets import GREY, grid, write_png

__all__ = ["add_arguments", "run", "preview_rows"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("catalogue", help="catalogue folder tree or CSV")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--views", type=int, default=6, help="distorted views per photo")
    p.add_argument("--rows", type=int, default=8, help="photos shown (spread over the items)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--min-crop-area", type=float, default=DEFAULT_MIN_AREA,
                   help="smallest random crop as a share of the photo (as in trainer fit)")
    p.add_argument("--kiosk-views", type=float, default=DEFAULT_KIOSK,
                   help="share of views held up in front of a generated counter (as in trainer fit)")
    p.add_argument("--size", type=int, default=LITE0_INPUT.size, help="view size in pixels")


def preview_rows(images: np.ndarray, size: int, views: int, seed: int, strength: float,
                 min_area: float = DEFAULT_MIN_AREA, kiosk: float = DEFAULT_KIOSK) -> list:
    rows = []
    for i, img in enumerate(images):
        cells = [(clean_view(img, size), GREY, "original")]
        cells += [(distort_seeded(img, size, (seed, i, v), strength, min_area, kiosk), None, f"view {v + 1}")
                  for v in range(views)]
        rows.append(cells)
    return rows


def run(args: argparse.Namespace) -> int:
    if args.views < 1 or args.rows < 1:
        raise ConfigError("--views and --rows must be at least 1")
    check_min_area(args.min_crop_area)
    check_share("--kiosk-views", args.kiosk_views)
    if not str(args.out).lower().endswith(".png"):
        raise ConfigError(f"--out {args.out}: must be a .png file")
    cat = load_catalogue(args.catalogue)
    # pick photos spread over items before decoding: a preview never decodes the whole catalogue
    by_item: dict[str, list] = {}
    for e in cat.entries:
        by_item.setdefault(e.item_id or "", []).append(e)
    picked = []
    while len(picked) < args.rows and any(by_item.values()):
        for k in list(by_item):
            if by_item[k] and len(picked) < args.rows:
                picked.append(by_item[k].pop(0))
    sub = type(cat)(cat.root, tuple(picked))
    data = load_image_set(sub, PreprocessSpec(size=args.size), scale=cache_scale_for(args.min_crop_area))
    rows = preview_rows(data.images, args.size, args.views, args.seed, args.strength, args.min_crop_area,
                        args.kiosk_views)
    write_png(args.out, grid(rows, size=max(64, args.size)))
    print(args.out)
    return 0
