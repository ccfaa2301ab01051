"""`edge-runtime match BUNDLE_DIR IMAGE...`: match image files against a
bundle through the same Matcher the camera pipeline calls per frame.

Output per image: the top-k items with cosine score and rank, or "no match"
when the best score is below the threshold. With --json, one object per line:

    {"image": PATH, "matches": [{"item_id": ..., "name": ..., "score": ..., "rank": ...}]}

where ``matches`` holds the top-k items whose score is at or above the
threshold, best first (rank 1 = best), so "no match" is ``"matches": []``.
An unreadable image is reported on stderr, the others are still matched, and
the exit code is 1. A bundle that fails verification is one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.errors import ImageError
from models.images import read_image

__all__ = ["add_arguments", "run"]

JSON_HELP = ('one JSON object per line: {"image": PATH, "matches": [{"item_id", "name", "score", '
             '"rank"}]}; matches holds the top-k at or above the threshold (no match = [])')


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle_dir", type=Path, metavar="BUNDLE_DIR",
                   help="a bundle folder, or a bundle store (its active release is used)")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="items per image (default 5)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine below which an item is not a match (default: the bundle's)")
    p.add_argument("--mode", choices=("auto", "exact", "annoy", "annoy_rerank"), default=None,
                   help="search mode (default: the bundle's)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--batch", type=int, default=16, help="images encoded per batch (default 16)")


def run(args: argparse.Namespace) -> int:
    from edge_runtime.matcher import Matcher
    from edge_runtime.overlay import find_overlay
    from edge_runtime.update.store import resolve_bundle

    if args.top_k < 1:
        from models.errors import ConfigError

        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    failed = 0
    bundle = resolve_bundle(args.bundle_dir)
    with Matcher.open(bundle, threshold=args.threshold, search_mode=args.mode,
                      overlay_dir=find_overlay(bundle)) as matcher:
        for start in range(0, len(args.images), max(1, args.batch)):
            paths, imgs = [], []
            for p in args.images[start : start + max(1, args.batch)]:
                try:
                    imgs.append(read_image(p))
                    paths.append(p)
                except ImageError as exc:
                    print(f"edge-runtime match: {exc}", file=sys.stderr)
                    failed += 1
            for path, matches in zip(paths, matcher.match_images(imgs, args.top_k), strict=True):
                kept = [m for m in matches if m.score >= matcher.threshold]
                if args.json:
                    print(json.dumps({"image": str(path), "matches": [
                        {"item_id": m.item_id, "name": m.name, "score": m.score, "rank": m.rank}
                        for m in kept]}), flush=True)
                elif not kept:
                    best = f" (best {matches[0].item_id} at {matches[0].score:.3f})" if matches else ""
                    print(f"{path}: no match{best}, threshold {matcher.threshold}")
                else:
                    print(f"{path}:")
                    for m in kept:
                        print(f"  {m.rank}. {m.item_id}  {m.name}  {m.score:.4f}")
    return 1 if failed else 0
