"""`trainer cluster RUN_DIR IMAGES --k N --out DIR`: group unlabelled photos
by their embeddings (k-means or agglomerative on cosine), for sorting store
captures into candidate new items. Writes DIR/groups.json, DIR/groups.csv
and DIR/sheet.png (one row per group); when IMAGES is a labelled catalogue
tree it also reports purity and NMI against the folders."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np

from models.bundle import atomic_write_bytes
from models.catalogue import load_catalogue
from models.errors import ConfigError
from trainer import checkpoint as ck
from trainer.embed import embed_entries
from trainer.retrieval_metrics import cluster_purity
from trainer.sheets import GREY, grid, write_png

__all__ = ["add_arguments", "run", "group"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run folder written by `trainer fit`")
    p.add_argument("images", help="folder of images (sub-folders are read as labels, if any) or CSV")
    p.add_argument("--k", type=int, required=True, help="number of groups")
    p.add_argument("--out", required=True, help="output folder (created; must not hold files)")
    p.add_argument("--method", choices=("kmeans", "agglomerative"), default="kmeans")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-row", type=int, default=10, help="photos per group on the sheet")
    p.add_argument("--device", default="cpu")


def group(emb: np.ndarray, k: int, method: str, seed: int = 0) -> np.ndarray:
    """Cluster ids (0..k-1) for L2-normalised embeddings."""
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(emb)
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(emb)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder")
    model, net, run_id = ck.load_model(args.run_dir)
    cat = load_catalogue(args.images)
    s = embed_entries(model.encoder.to(args.device), cat.entries, net.input, args.device)
    if not 1 <= args.k <= len(s.entries):
        raise ConfigError(f"--k {args.k}: must be between 1 and the {len(s.entries)} readable images")
    ids = group(s.embeddings, args.k, args.method, args.seed)
    labels = s.labels
    distinct = set(labels)
    report: dict[str, object] = {"run_id": run_id, "images": len(ids), "k": args.k, "method": args.method}
    if len(distinct) > 1:  # a labelled tree: score the grouping against the folders
        from sklearn.metrics import normalized_mutual_info_score

        report["purity"] = round(cluster_purity(labels.astype(str), ids), 4)
        report["nmi"] = round(float(normalized_mutual_info_score(labels.astype(str), ids)), 4)
    groups = [{"group": int(g), "images": [str(s.entries[i].path) for i in np.flatnonzero(ids == g)]}
              for g in range(args.k)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "group", "label"])
    for e, g in zip(s.entries, ids, strict=True):
        w.writerow([str(e.path), int(g), e.item_id or ""])
    rows = [[(s.thumbs[i], GREY, f"g{g}") for i in np.flatnonzero(ids == g)[: args.per_row]]
            for g in range(args.k)]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "groups.json", (json.dumps({**report, "groups": groups}, indent=2) + "\n").encode())
    atomic_write_bytes(out / "groups.csv", buf.getvalue().encode())
    write_png(out / "sheet.png", grid(rows, size=64))
    print(json.dumps(report))
    return 0
