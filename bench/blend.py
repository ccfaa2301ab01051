"""How far to blend a finished Lite0 run back toward its ImageNet start
before its whitened head is fitted (trainer/whiten.py, ``--blend``).

For each blend: the run's best backbone is blended (trainer.whiten.blend_backbone),
the pooled features of the train and val photos are computed, the whitened
head is fitted on the photos of the products the run was trained on, and
the val photos are ranked against the train photos, as bench/retrieval.py
ranks them. A run trained with ``bench/retrieval.py --unseen`` (its catalogue
lacks every 4th product) also gets the unseen-products figures: each held-out
product enrolled from its first 5 train photos, its val photos ranked among
all products ("unseen"), and the trained products' val photos in the same
gallery ("trained"). The run folder is only read.

    python bench/blend.py RUN_DIR --blends 1,0.9,0.75,0.5,0 [--unseen]
    python bench/blend.py RUN_DIR --blends 0.75 --sizes 224,256,288 [--weights last]

``--sizes`` embeds the photos at other input sides than the run trained at
(the head is refitted at each); ``--weights last`` takes the run's last
weights instead of the checkpoint its held-out photos picked.

Writes bench/results/blend-<time>.json/.md. 2.5-4 minutes a blend on a 2-core
AVX2 CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.retrieval import ENROL_PHOTOS, cpu_flags, first_photos, held_out_items, run_rate  # noqa: E402
from trainer.retrieval_metrics import retrieval_report  # noqa: E402


def blended_encoder(run: Path, blend: float, weights: str = "best"):
    """The run's encoder with its backbone blended toward ImageNet."""
    from trainer import checkpoint as ck
    from trainer.whiten import blend_backbone

    model, _, _ = ck.load_model(run, weights, head=False)
    blend_backbone(model.encoder, blend)
    return model.encoder


def pooled_at(encoder, net, entries: dict, size: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pooled features of every photo; ``size`` overrides the run's input side
    (the network is convolutional up to a global pool)."""
    from trainer.whiten import _pooled_features

    if size is not None:
        net = net.model_copy(update={"input": net.input.model_copy(update={"size": size})})
    return {k: _pooled_features(encoder, v, net) for k, v in entries.items()}


def parse_blends(ap: argparse.ArgumentParser, text: str) -> list[float]:
    """``--blends``: comma-separated shares from 0 to 1 (a bad one is a usage error)."""
    try:
        blends = [float(b) for b in text.split(",")]
    except ValueError:
        ap.error(f"--blends must be comma-separated shares, got {text}")
    if any(not 0 <= b <= 1 for b in blends):
        ap.error(f"--blends must be shares from 0 to 1, got {text}")
    return blends


def figures(feats: dict, dim: int, held: set[str]) -> dict[str, float]:
    from trainer.whiten import fit_whitening

    (ftr, ltr), (fva, lva) = feats["train"], feats["val"]
    new = np.array([x in held for x in ltr], dtype=bool)
    w = fit_whitening(ftr[~new], ltr[~new], dim)

    def emb(x: np.ndarray) -> np.ndarray:
        y = x @ w.weight.T + w.bias
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    etr, eva = emb(ftr), emb(fva)
    if not held:
        rep = retrieval_report(eva @ etr.T, lva, ltr, ks=(1, 5))
        return {k: round(float(rep[k]), 4) for k in ("top1", "top5", "mAP")}
    keep = ~new | first_photos(ltr, ENROL_PHOTOS)
    q = np.array([x in held for x in lva], dtype=bool)
    out = {}
    for name, m in (("unseen", q), ("trained", ~q)):
        rep = retrieval_report(eva[m] @ etr[keep].T, lva[m], ltr[keep], ks=(1, 5))
        out.update({f"{name}_{k}": round(float(rep[k]), 4) for k in ("top1", "top5")})
    return out


def write_report(base: Path, result: dict, first: str, title: str) -> None:
    """``base``.json (``result``) and ``base``.md: ``title`` with the CPU, then
    ``result["rows"]`` as a table of figures()' columns, first column ``first``."""
    cols = ["unseen_top1", "unseen_top5", "trained_top1", "trained_top5"] if result["unseen"] else ["top1", "top5", "mAP"]
    flags = ", ".join(k for k, v in result["cpu_flags"].items() if v) or "unknown"
    md = [f"{title}; {result['cpu_count']} CPU cores, flags: {flags}).", "",
          f"| {first} | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
          "|---|" + "---|" * len(cols)]
    md += [f"| {k} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for k, r in result["rows"].items()]
    Path(f"{base}.json").write_text(json.dumps(result, indent=2) + "\n")  # a tag may hold a dot
    Path(f"{base}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a Lite0 run folder written by `trainer fit`")
    ap.add_argument("--blends", default="1,0.9,0.75,0.5,0", help="comma-separated shares of the fine-tuned backbone")
    ap.add_argument("--unseen", action="store_true", help="the run was trained without every 4th product")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/grocery")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--weights", choices=("best", "last"), default="best", help="which saved weights to blend")
    ap.add_argument("--sizes", default="", help="comma-separated input sides to measure at (default: the run's)")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    from models.catalogue import load_catalogue
    from trainer import checkpoint as ck

    blends = parse_blends(ap, a.blends)
    _, net, _ = ck.read_config(a.run)
    if net.backbone != "lite0":
        ap.error(f"{a.run}: backbone {net.backbone}; blending needs lite0")
    held = held_out_items(a.data / "classes.csv") if a.unseen else set()
    entries = {s: [e for e in load_catalogue(a.data / s).entries if e.item_id] for s in ("train", "val")}
    try:
        sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else [None]
    except ValueError:
        ap.error(f"--sizes must be comma-separated whole pixel counts, got {a.sizes}")
    if any(s is not None and not 32 <= s <= 1024 for s in sizes):
        ap.error(f"--sizes must be from 32 to 1024 px, got {a.sizes}")
    try:  # before the minutes of embedding, so a bad folder fails first
        a.results.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--results {a.results}: {e.strerror}")
    rows = {}
    for b in blends:
        # once per blend (under a second, so left out of the timing), embedded at each size
        encoder = blended_encoder(a.run, b, a.weights)
        for size in sizes:
            key = f"{b:g}" + (f" at {size} px" if size else "")
            t0 = time.monotonic()
            rows[key] = {**figures(pooled_at(encoder, net, entries, size), net.embedding_size, held),
                         "seconds": round(time.monotonic() - t0, 1)}  # embedding and head fit
            print(json.dumps({key: rows[key]}), flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + (f"-{a.tag}" if a.tag else "")
    result = {"time": stamp, "run": str(a.run), "weights": a.weights, "epochs": run_rate(a.run)["epochs"],
              "unseen": a.unseen, "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(), "rows": rows}
    write_report(a.results / f"blend-{stamp}", result, "blend",
                 f"Blend of the fine-tuned backbone with its ImageNet start, whitened head refitted at each "
                 f"(run {a.run.name}, {a.weights} weights, {result['epochs']} epochs"
                 f"{', trained without every 4th product' if a.unseen else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
