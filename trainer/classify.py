"""`trainer classify RUN_DIR --gallery CAT IMAGE... [--threshold T] [--json]`:
label photos by a similarity-weighted vote of their nearest gallery photos;
below ``--threshold`` (cosine of the winning item's best match) the answer
is "unknown", as the kiosk does for products it does not know."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.catalogue import Entry, load_catalogue
from models.errors import ConfigError
from trainer import checkpoint as ck
from trainer.embed import embed_entries
from trainer.retrieval_metrics import nn_vote

__all__ = ["add_arguments", "run", "UNKNOWN"]

UNKNOWN = "unknown"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run folder written by `trainer fit`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to label")
    p.add_argument("--gallery", required=True, help="catalogue of labelled photos (folder or CSV)")
    p.add_argument("--threshold", type=float, default=0.5, help="cosine below which the answer is unknown")
    p.add_argument("--k", type=int, default=5, help="neighbours that vote")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    if not -1 <= args.threshold <= 1:
        raise ConfigError(f"--threshold {args.threshold}: must be a cosine in [-1, 1]")
    for img in args.images:
        if not Path(img).is_file():
            raise ConfigError(f"{img}: no such image file")
    model, net, _ = ck.load_model(args.run_dir)
    enc = model.encoder.to(args.device)
    gallery = embed_entries(enc, load_catalogue(args.gallery).entries, net.input, args.device, "gallery images")
    queries = embed_entries(enc, [Entry(Path(p), None) for p in args.images], net.input, args.device,
                            "images to classify")
    sim = queries.embeddings @ gallery.embeddings.T
    for e, row in zip(queries.entries, sim, strict=True):
        item, score = nn_vote(row, gallery.labels, args.k)
        label = item if score >= args.threshold else UNKNOWN
        if args.json:
            print(json.dumps({"image": str(e.path), "item_id": label, "score": round(score, 4),
                              "nearest_item": item}))
        else:
            print(f"{e.path}\t{label}\t{score:.3f}")
    return 0
