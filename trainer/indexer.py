"""`trainer index BUNDLE_DIR CATALOGUE`: encode every catalogue image with the
bundle's exported encoder through ONNX Runtime (the artifact and the
preprocessing the device runs), build the Annoy index and complete the bundle
(manifest.json last). The core lives in models.indexing (torch-free)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.encoders.onnx_backend import OnnxEncoder
from models.bundle import ENCODER
from models.catalogue import load_catalogue
from models.indexing import (
    DEFAULT_EXACT_BELOW,
    DEFAULT_SEARCH_K,
    DEFAULT_TREES,
    IndexParams,
    index_catalogue,
    read_export_info,
)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle_dir", type=Path, metavar="BUNDLE_DIR", help="made by `trainer export`")
    p.add_argument("catalogue", type=Path, metavar="CATALOGUE", help="catalogue folder or CSV")
    p.add_argument("--trees", type=int, default=DEFAULT_TREES,
                   help=f"Annoy trees (default {DEFAULT_TREES}, from bench/index.py)")
    p.add_argument("--search-k", type=int, default=DEFAULT_SEARCH_K,
                   help="Annoy search_k stored as the bundle default (-1: trees x n)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="cosine below which a query is 'no match' (bundle default; default 0.5)")
    p.add_argument("--mode", choices=("auto", "exact", "annoy", "annoy_rerank"), default="auto",
                   help="search mode stored as the bundle default (auto: exact below --exact-below "
                        "vectors, else Annoy candidates re-ranked by exact cosine)")
    p.add_argument("--exact-below", type=int, default=DEFAULT_EXACT_BELOW,
                   help=f"auto mode's crossover in vectors (default {DEFAULT_EXACT_BELOW})")
    p.add_argument("--probes", type=int, default=32,
                   help="probe images kept for the device self-test (default 32)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.trees < 1 or args.probes < 0 or not -1.0 <= args.threshold <= 1.0:
        from models.errors import ConfigError

        raise ConfigError("--trees must be >= 1, --probes >= 0, --threshold within [-1, 1]")
    info = read_export_info(args.bundle_dir)
    cat = load_catalogue(args.catalogue)
    encoder = OnnxEncoder(args.bundle_dir / ENCODER, info.input, info.embedding_size,
                          threads=args.threads)
    params = IndexParams(n_trees=args.trees, search_k=args.search_k, threshold=args.threshold,
                         mode=args.mode, exact_below=args.exact_below, probes=args.probes)
    try:
        m, skipped = index_catalogue(args.bundle_dir, cat.entries, cat.names(), encoder, params,
                                     root=cat.root, progress=not args.no_progress)
    finally:
        encoder.close()
    print(f"indexed {m.index.n_vectors} images of {m.item_count} items into {args.bundle_dir} "
          f"(bundle v{m.bundle_version}, {m.index.n_trees} trees, {len(skipped)} unreadable "
          f"skipped)")
    for s in skipped:
        print(f"  skipped: {s}")
    return 0
