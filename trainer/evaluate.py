"""`trainer eval RUN_DIR --gallery CAT --queries CAT [--iconic CAT] [--sheet out.png]`.

Nearest-neighbour retrieval by cosine similarity, as on the device: top-1/5
accuracy by item, image-level recall@k and mAP of queries against the
gallery; and, with ``--iconic`` (or when every gallery item has exactly one
image), recall@1/5 of the queries against one catalogue image per item.
Prints one JSON object; ``--json-out`` writes it atomically too.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from models.catalogue import load_catalogue
from trainer import checkpoint as ck
from trainer.embed import EmbeddedSet, embed_entries
from trainer.retrieval_metrics import ranked_items, retrieval_report
from trainer.sheets import GREEN, GREY, RED, grid, write_png

__all__ = ["add_arguments", "run", "evaluate_sets", "contact_sheet"]

log = logging.getLogger("trainer.eval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run folder written by `trainer fit`")
    p.add_argument("--gallery", required=True, help="catalogue of gallery photos (folder or CSV)")
    p.add_argument("--queries", required=True, help="catalogue of query photos with their items")
    p.add_argument("--iconic", help="catalogue with one catalogue image per item (optional)")
    p.add_argument("--sheet", help="write a contact sheet PNG (query, top-5 items, right/wrong)")
    p.add_argument("--sheet-rows", type=int, default=24, help="queries shown on the sheet")
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument("--json-out", help="also write the figures to this JSON file")
    p.add_argument("--device", default="cpu")


def evaluate_sets(queries: EmbeddedSet, gallery: EmbeddedSet) -> dict[str, float]:
    sim = queries.embeddings @ gallery.embeddings.T
    return retrieval_report(sim, queries.labels, gallery.labels, ks=(1, 5))


def contact_sheet(queries: EmbeddedSet, gallery: EmbeddedSet, rows: int, seed: int = 0) -> np.ndarray:
    """One row per query: the query, then the best image of each of the top-5 items
    framed green (right item) or red (wrong)."""
    sim = queries.embeddings @ gallery.embeddings.T
    pick = np.random.default_rng(seed).permutation(len(queries.entries))[:rows]
    g_labels = gallery.labels
    out = []
    for qi in sorted(pick):
        q_item = queries.labels[qi]
        order = np.argsort(-sim[qi], kind="stable")
        cells = [(queries.thumbs[qi], GREY, f"Q {q_item.rsplit('/', 1)[-1]}")]
        shown: set[str] = set()
        for gi in order:
            if g_labels[gi] in shown:
                continue
            shown.add(g_labels[gi])
            colour = GREEN if g_labels[gi] == q_item else RED
            cells.append((gallery.thumbs[gi], colour, f"{sim[qi, gi]:.2f} {g_labels[gi].rsplit('/', 1)[-1]}"))
            if len(shown) == 5:
                break
        out.append(cells)
    return grid(out, size=72)


def run(args: argparse.Namespace) -> int:
    model, net, run_id = ck.load_model(args.run_dir, args.weights)
    enc = model.encoder.to(args.device)
    gallery_cat = load_catalogue(args.gallery)
    query_cat = load_catalogue(args.queries)
    gallery = embed_entries(enc, gallery_cat.entries, net.input, args.device, "gallery images")
    queries = embed_entries(enc, query_cat.entries, net.input, args.device, "query images")
    missing = sorted(set(queries.labels) - set(gallery.labels))
    if missing:
        log.warning("%d query item(s) have no gallery image, e.g. %s", len(missing), missing[0])
    report: dict[str, object] = {"run_id": run_id, "weights": args.weights,
                                 **{k: _r(v) for k, v in evaluate_sets(queries, gallery).items()}}
    iconic = None
    if args.iconic:
        iconic = embed_entries(enc, load_catalogue(args.iconic).entries, net.input, args.device,
                               "iconic images")
    elif len(set(gallery.labels)) == len(gallery.labels):
        iconic = gallery
    if iconic is not None:
        sim = queries.embeddings @ iconic.embeddings.T
        items = ranked_items(sim, iconic.labels, 5)
        report["iconic_recall@1"] = _r(float(np.mean(items[:, 0] == queries.labels)))
        report["iconic_recall@5"] = _r(float(np.mean([q in r for q, r in zip(queries.labels, items, strict=True)])))
    if args.sheet:
        write_png(args.sheet, contact_sheet(queries, gallery, args.sheet_rows))
        report["sheet"] = str(args.sheet)
    text = json.dumps(report, indent=2)
    if args.json_out:
        from models.bundle import atomic_write_bytes

        atomic_write_bytes(Path(args.json_out), (text + "\n").encode())
    print(text)
    return 0


def _r(v: float) -> float:
    return round(float(v), 4)
