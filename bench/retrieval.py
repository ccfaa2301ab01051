"""Retrieval benchmark on the Grocery Store dataset (Klasson et al., WACV 2019).

Trains on ``train/`` (labels = folders) with ``--minutes`` per objective via
`trainer fit` (a subprocess, exactly the CLI users run), then reports side by
side: a colour-histogram baseline, ``--objective ae`` and the default
objective. Figures: top-1/top-5 by item of the val photos with the train
photos as gallery, and recall@1/@5 of the val photos against the one iconic
catalogue image per item. Writes bench/results/retrieval-<time>.json/.md.

    python bench/retrieval.py --minutes 30

Timings depend on what else runs on the CPU; the JSON records img/s so epoch
time for another catalogue size is images / (img/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.catalogue import iter_images, load_catalogue  # noqa: E402
from trainer.retrieval_metrics import ranked_items, retrieval_report  # noqa: E402


def colour_histograms(entries) -> tuple[np.ndarray, np.ndarray]:
    """HSV histogram (16 hue x 4 sat x 4 val), sqrt + L2 normalised: cosine = Hellinger."""
    import cv2

    feats, labels = [], []
    for e, img in iter_images(list(entries)):
        small = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        h = cv2.calcHist([hsv], [0, 1, 2], None, [16, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
        h = np.sqrt(h / max(h.sum(), 1))
        feats.append(h / max(np.linalg.norm(h), 1e-12))
        labels.append(e.item_id)
    return np.array(feats, np.float32), np.array(labels, dtype=object)


def figures(q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray, ic: np.ndarray,
            il: np.ndarray) -> dict[str, float]:
    rep = retrieval_report(q @ g.T, ql, gl, ks=(1, 5))
    items = ranked_items(q @ ic.T, il, 5)
    rep["iconic_recall@1"] = float(np.mean(items[:, 0] == ql))
    rep["iconic_recall@5"] = float(np.mean([a in r for a, r in zip(ql, items, strict=True)]))
    return {k: round(float(v), 4) for k, v in rep.items()}


def train(objective: str, data: Path, minutes: float, work: Path, seed: int, extra: list[str]) -> dict:
    out = work / objective
    cmd = [sys.executable, "-m", "trainer.cli", "fit", str(data / "train"), "--out", str(out),
           "--objective", objective, "--minutes", str(minutes), "--seed", str(seed), "--no-progress",
           *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"fit {objective} failed:\n{res.stderr[-3000:]}")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    rates = [m["img_per_s"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if m.get("kind") == "train" and m.get("img_per_s")]
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    # the loop logs images seen / time since the start, so the last line is the
    # whole run's mean (with progressive resizing, early views are faster)
    summary["img_per_s"] = round(float(rates[-1]), 1) if rates else None
    return summary


def embed_run(run_dir: Path, entries) -> tuple[np.ndarray, np.ndarray]:
    from trainer import checkpoint as ck
    from trainer.embed import embed_entries

    model, net, _ = ck.load_model(run_dir)
    s = embed_entries(model.encoder, entries, net.input)
    return s.embeddings, s.labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/grocery")
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per objective")
    ap.add_argument("--objectives", default="ae,default")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kiosk-bench-runs",
                    help="where the run folders go (outside the repo: they hold weights)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-arg", action="append", default=[], help="extra flag passed to trainer fit")
    a = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = a.work / stamp
    work.mkdir(parents=True, exist_ok=True)
    a.results.mkdir(parents=True, exist_ok=True)
    cats = {k: load_catalogue(a.data / d) for k, d in
            (("train", "train"), ("val", "val"), ("iconic", "iconic-images-and-descriptions"))}
    rows: dict[str, dict] = {}
    feats = {k: colour_histograms(c.entries) for k, c in cats.items()}
    rows["colour histogram"] = figures(*feats["val"], *feats["train"], *feats["iconic"])
    for obj in a.objectives.split(","):
        s = train(obj, a.data, a.minutes, work, a.seed, a.fit_arg)
        emb = {k: embed_run(work / obj, c.entries) for k, c in cats.items()}
        rows[f"objective {obj}"] = {**figures(*emb["val"], *emb["train"], *emb["iconic"]), "train": s}
        print(json.dumps({obj: rows[f"objective {obj}"]}), flush=True)
    import torch

    from trainer.loop import autocast_dtype

    amp = autocast_dtype(torch.device("cpu"), "auto")
    result = {"time": stamp, "minutes_per_objective": a.minutes, "seed": a.seed, "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "fit_args": a.fit_arg,
              "training_precision": "bf16 autocast" if amp is torch.bfloat16 else "fp32",
              "load_avg_1m_end": os.getloadavg()[0], "train_images": len(cats["train"]),
              "val_images": len(cats["val"]), "rows": rows}
    md = markdown(result)
    (a.results / f"retrieval-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.results / f"retrieval-{stamp}.md").write_text(md)
    print(md)
    return 0


def markdown(r: dict) -> str:
    lines = [f"Grocery Store val ({r['val_images']} photos) vs train gallery ({r['train_images']}), "
             f"{r['minutes_per_objective']:g} min training per objective"
             + (f" (seed {r['seed']})" if "seed" in r else "") + f", {r['cpu_count']} CPU cores "
             f"(load {r['load_avg_1m_end']:.1f} at the end), training in {r.get('training_precision', 'fp32')}"
             + (f", fit flags {' '.join(r['fit_args'])}" if r.get("fit_args") else "") + ".", "",
             "| method | top-1 | top-5 | mAP | iconic R@1 | iconic R@5 | epochs | img/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in r["rows"].items():
        t = v.get("train", {})
        ep = t.get("epochs", "")
        rate = t.get("img_per_s", "")
        lines.append(f"| {name} | {v['top1']:.3f} | {v['top5']:.3f} | {v['mAP']:.3f} | "
                     f"{v['iconic_recall@1']:.3f} | {v['iconic_recall@5']:.3f} | {ep} | {rate} |")
    rates = [v["train"]["img_per_s"] for v in r["rows"].values() if v.get("train", {}).get("img_per_s")]
    if rates:
        def span(lo: float, hi: float) -> str:
            return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"

        n = r["train_images"]
        lines += ["", "Training time is linear in catalogue size: one epoch takes images / (img/s) "
                  f"seconds, here {n} images / {span(min(rates), max(rates))} img/s "
                  f"= {span(n / max(rates), n / min(rates))} s per epoch."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
