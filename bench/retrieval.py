"""Retrieval benchmark on the Grocery Store dataset (Klasson et al., WACV 2019).

Trains on ``train/`` (labels = folders) for ``--minutes`` per backbone and
objective with `trainer fit` (a subprocess, exactly the CLI users run), then
reports side by side, with a colour-histogram baseline:

- top-1/top-5 by item and mAP of the val photos with the train photos as
  gallery, and recall@1/@5 against the one iconic catalogue image per item;
- held up: the val photos held up in front of a busy background and cropped
  as the kiosk crops them (bench/kiosk_crops.py), top-1 against the train photos;
- clip: frames of val-clip.mp4 cropped to what differs from the empty counter,
  top-1 per frame and per presentation (embeddings averaged);
- with ``--unseen``: trained without every 4th product (by class id), each of
  those then enrolled from 5 of its train photos (no retraining); top-1/top-5
  of their val photos ranked among all products; beside it, ranked among the
  held-out products only, and with every product's gallery cut to 5 photos.

    python bench/retrieval.py --minutes 30                       # lite0, the default
    python bench/retrieval.py --minutes 30 --backbones lite0,scratch --seed 1
    python bench/retrieval.py --minutes 30 --unseen --backbones lite0,scratch
    python bench/retrieval.py --eval-run RUN_DIR                 # figures of a finished run

Writes bench/results/retrieval-<time>.json/.md with the CPU's relevant flags
(training speed depends on AVX512-BF16/AMX: bf16 autocast runs only there).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kiosk_crops import clip_crops, held_up_val  # noqa: E402
from models.catalogue import iter_images, load_catalogue  # noqa: E402
from trainer.retrieval_metrics import ranked_items, retrieval_report, top_k_accuracy  # noqa: E402

ENROL_PHOTOS = 5


def cpu_flags() -> dict[str, bool]:
    """The CPU features training speed depends on (from /proc/cpuinfo)."""
    try:
        flags = set(next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        flags = set()
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")}


def colour_histograms(images) -> np.ndarray:
    """HSV histogram (16 hue x 4 sat x 4 val), sqrt + L2 normalised: cosine = Hellinger."""
    import cv2

    feats = []
    for img in images:
        small = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        h = cv2.calcHist([hsv], [0, 1, 2], None, [16, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
        h = np.sqrt(h / max(h.sum(), 1))
        feats.append(h / max(np.linalg.norm(h), 1e-12))
    return np.array(feats, np.float32)


def class_items(classes_csv: Path) -> dict[int, str]:
    """Fine class id -> item id (the folder path of its iconic image)."""
    out = {}
    with open(classes_csv, newline="") as f:
        for row in csv.DictReader(f):
            out[int(row["Class ID (int)"])] = "/".join(row["Iconic Image Path (str)"].strip("/").split("/")[1:-1])
    return out


def held_out_items(classes_csv: Path) -> set[str]:
    """The products ``--unseen`` trains without: every 4th by class id."""
    return {item for cid, item in class_items(classes_csv).items() if cid % 4 == 3}


class QuerySets:
    """Every image set the figures need, decoded once (BGR), with labels."""

    def __init__(self, data: Path, clip: Path | None) -> None:
        self.cats = {k: load_catalogue(data / d) for k, d in
                     (("train", "train"), ("val", "val"), ("iconic", "iconic-images-and-descriptions"))}
        self.images = {k: [img for _, img in iter_images(list(c.entries))] for k, c in self.cats.items()}
        self.labels = {k: np.array([e.item_id for e in c.entries], dtype=object) for k, c in self.cats.items()}
        held = held_up_val(self.cats["val"].entries)
        self.images["held_up"] = [c for c, _ in held]
        self.labels["held_up"] = np.array([i for _, i in held], dtype=object)
        self.clip_groups = None
        if clip is not None and clip.exists():
            crops = clip_crops(clip, clip.with_suffix(".csv"), class_items(data / "classes.csv"))
            self.images["clip"] = [c for c, _, _ in crops]
            self.labels["clip"] = np.array([i for _, i, _ in crops], dtype=object)
            self.clip_groups = np.array([g for _, _, g in crops])


def figures(emb: dict[str, np.ndarray], qs: QuerySets) -> dict[str, float]:
    lab = qs.labels
    rep = retrieval_report(emb["val"] @ emb["train"].T, lab["val"], lab["train"], ks=(1, 5))
    items = ranked_items(emb["val"] @ emb["iconic"].T, lab["iconic"], 5)
    rep["iconic_recall@1"] = float(np.mean(items[:, 0] == lab["val"]))
    rep["iconic_recall@5"] = float(np.mean([a in r for a, r in zip(lab["val"], items, strict=True)]))
    rep["held_up_top1"] = float(np.mean(ranked_items(emb["held_up"] @ emb["train"].T, lab["train"], 1)[:, 0]
                                        == lab["held_up"]))
    best = ranked_items(emb["val"] @ emb["train"].T, lab["train"], 1)[:, 0]
    for top in sorted({str(i).split("/")[0] for i in lab["val"]}):
        mask = np.array([str(i).split("/")[0] == top for i in lab["val"]])
        rep[f"top1_{top}"] = float(np.mean(best[mask] == lab["val"][mask]))
    if qs.clip_groups is not None:
        e, g = emb["clip"], qs.clip_groups
        rep["clip_frame_top1"] = float(np.mean(ranked_items(e @ emb["train"].T, lab["train"], 1)[:, 0]
                                               == lab["clip"]))
        means = np.stack([e[g == k].mean(axis=0) for k in np.unique(g)])
        truth = np.array([lab["clip"][g == k][0] for k in np.unique(g)], dtype=object)
        rep["clip_presentation_top1"] = float(np.mean(ranked_items(means @ emb["train"].T, lab["train"], 1)[:, 0]
                                                      == truth))
    out: dict = {k: round(float(v), 4) for k, v in rep.items()}
    wrong = Counter(f"{a} -> {b}" for a, b in zip(lab["val"], best, strict=True) if a != b)
    out["confusions"] = wrong.most_common(8)
    return out


def first_photos(labels: np.ndarray, n: int) -> np.ndarray:
    """Mask of each label's first ``n`` photos, in gallery order."""
    seen: Counter = Counter()
    mask = np.zeros(len(labels), dtype=bool)
    for i, lab_ in enumerate(labels):
        mask[i], seen[lab_] = seen[lab_] < n, seen[lab_] + 1
    return mask


def unseen_figures(emb: dict[str, np.ndarray], qs: QuerySets, held: set[str]) -> dict[str, float]:
    """Val photos of held-out items ranked among all products, each held-out
    item enrolled from its first ENROL_PHOTOS train photos."""
    lab = qs.labels
    new = np.array([lab_ in held for lab_ in lab["train"]])
    keep = ~new | first_photos(lab["train"], ENROL_PHOTOS)
    q = np.array([lab_ in held for lab_ in lab["val"]])
    rep = retrieval_report(emb["val"][q] @ emb["train"][keep].T, lab["val"][q], lab["train"][keep], ks=(1, 5))
    out = {f"unseen_{k}": round(float(v), 4) for k, v in rep.items() if k in ("top1", "top5", "mAP")}
    # Where the misses come from: ranked among the held-out products only (the
    # embedding tells new products apart?), and with every product's gallery cut
    # to its first ENROL_PHOTOS photos (a 30-photo product against a 5-photo one).
    only = keep & new
    out["unseen_among_new_top1"] = round(top_k_accuracy(emb["val"][q] @ emb["train"][only].T, lab["val"][q],
                                                        lab["train"][only]), 4)
    five = first_photos(lab["train"], ENROL_PHOTOS)
    out["unseen_equal_gallery_top1"] = round(top_k_accuracy(emb["val"][q] @ emb["train"][five].T, lab["val"][q],
                                                            lab["train"][five]), 4)
    out["unseen_items"], out["unseen_queries"] = len({x for x in lab["val"][q]}), int(q.sum())
    return out


def write_catalogue_csv(entries, exclude: set[str], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        for e in entries:
            if e.item_id not in exclude:
                w.writerow([str(e.path), e.item_id])
    return path


def train(name: str, catalogue: Path, minutes: float, work: Path, seed: int, extra: list[str]) -> dict:
    out = work / name
    cmd = [sys.executable, "-m", "trainer.cli", "fit", str(catalogue), "--out", str(out),
           "--minutes", str(minutes), "--seed", str(seed), "--no-progress", *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"fit {name} failed:\n{res.stderr[-3000:]}")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    summary.update(run_rate(out))
    return summary


def run_rate(run_dir: Path) -> dict:
    """The run's mean img/s (the loop logs images seen / time since start, so
    the last train line is the whole run's mean) and its epochs."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [m["img_per_s"] for m in lines if m.get("kind") == "train" and m.get("img_per_s")]
    state = json.loads((run_dir / "state.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    info = json.loads((run_dir / "head.json").read_text()) if (run_dir / "head.json").exists() else {}
    head = info.get("head", "projection")
    if head == "whitened" and info.get("blend", 1.0) != 1.0:
        head += f" on a {info['blend']:g} blend"
    if info.get("head") == "whitened" and info.get("pool_power", 1.0) != 1.0:
        head += f", GeM {info['pool_power']:g}"
    pool = [m for m in lines if m.get("kind") == "pool"]
    return {"img_per_s": round(float(rates[-1]), 1) if rates else None,
            "epochs": round(state["step"] / max(1, state["steps_per_epoch"]), 1),
            "precision": config.get("train", {}).get("loop", {}).get("precision", "auto"), "head": head,
            **({"pool_views": pool[-1]["views"], "pool_s": pool[-1]["seconds"]} if pool else {})}


def embed_run(run_dir: Path, qs: QuerySets) -> dict[str, np.ndarray]:
    from models.preprocess import preprocess
    from trainer import checkpoint as ck
    from trainer.embed import embed_float

    model, net, _ = ck.load_model(run_dir)
    return {k: embed_float(model.encoder, np.stack([preprocess(im, net.input) for im in imgs]))
            for k, imgs in qs.images.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/grocery")
    ap.add_argument("--clip", type=Path, default=ROOT.parent / "shared/data/kiosk-clips/val-clip.mp4")
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per run")
    ap.add_argument("--backbones", default="lite0", help="comma-separated: lite0, scratch")
    ap.add_argument("--objectives", default="default", help="comma-separated: default, ae, metric")
    ap.add_argument("--unseen", action="store_true",
                    help="train without every 4th product, enrol those from 5 photos each, rank their val photos")
    ap.add_argument("--eval-run", type=Path, action="append", default=[],
                    help="report a finished run instead of training (repeatable)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kiosk-bench-runs",
                    help="where the run folders go (outside the repo: they hold weights)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-arg", action="append", default=[], help="extra flag passed to trainer fit")
    ap.add_argument("--tag", default="", help="a word for the result file names")
    a = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S") + (f"-{a.tag}" if a.tag else "")
    work = a.work / stamp
    work.mkdir(parents=True, exist_ok=True)
    a.results.mkdir(parents=True, exist_ok=True)
    qs = QuerySets(a.data, a.clip)
    held = held_out_items(a.data / "classes.csv") if a.unseen else set()
    rows: dict[str, dict] = {}
    if not a.eval_run:
        hist = {k: colour_histograms(v) for k, v in qs.images.items()}
        rows["colour histogram"] = figures(hist, qs)
    runs: list[tuple[str, Path, dict]] = [(f"run {p}", p, run_rate(p)) for p in a.eval_run]
    catalogue = a.data / "train"
    if a.unseen:
        catalogue = write_catalogue_csv(qs.cats["train"].entries, held, work / "train-without-held-out.csv")
    if not a.eval_run:
        for backbone in a.backbones.split(","):
            for obj in a.objectives.split(","):
                name = f"{backbone}-{obj}"
                s = train(name, catalogue, a.minutes, work, a.seed,
                          ["--backbone", backbone, "--objective", obj, *a.fit_arg])
                runs.append((f"{backbone}, objective {obj}", work / name, s))
    for label, run_dir, s in runs:
        emb = embed_run(run_dir, qs)
        row = figures(emb, qs)
        if a.unseen:
            row.update(unseen_figures(emb, qs, held))
        rows[label] = {**row, "train": s}
        print(json.dumps({label: rows[label]}), flush=True)
    import torch

    from trainer.loop import autocast_dtype

    asked = a.fit_arg[a.fit_arg.index("--precision") + 1] if "--precision" in a.fit_arg[:-1] else "auto"
    amp = autocast_dtype(torch.device("cpu"), asked)
    result = {"time": stamp, "minutes_per_run": None if a.eval_run else a.minutes, "seed": a.seed, "cpu_count": os.cpu_count(),
              "cpu_flags": cpu_flags(), "torch": torch.__version__, "fit_args": a.fit_arg, "unseen": a.unseen,
              "training_precision": "bf16 autocast" if amp is torch.bfloat16 else "fp32",
              "load_avg_1m_end": os.getloadavg()[0], "train_images": len(qs.cats["train"]),
              "val_images": len(qs.cats["val"]), "clip_crops": len(qs.images.get("clip", [])), "rows": rows}
    md = markdown(result)
    (a.results / f"retrieval-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.results / f"retrieval-{stamp}.md").write_text(md)
    print(md)
    return 0


def markdown(r: dict) -> str:
    flags = ", ".join(k for k, v in r.get("cpu_flags", {}).items() if v) or "unknown"
    lines = [f"Grocery Store val ({r['val_images']} photos) vs train gallery ({r['train_images']}), "
             + (f"{r['minutes_per_run']:g} min training per run (seed {r['seed']}), "
                if r.get("minutes_per_run") else "finished runs (--eval-run; epochs and img/s from their logs), ")
             + f"{r['cpu_count']} CPU cores "
             f"(flags: {flags}; load {r['load_avg_1m_end']:.1f} at the end), training in "
             f"{r.get('training_precision', 'fp32')}"
             + (f", fit flags {' '.join(r['fit_args'])}" if r.get("fit_args") else "") + ".", "",
             "| method | top-1 | top-5 | mAP | iconic R@1 | iconic R@5 | held up | clip frame | clip pres. "
             + ("| unseen top-1 | unseen top-5 | among new only | 5-photo galleries " if r.get("unseen") else "") + "| epochs | img/s | precision, head, view pool |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if r.get("unseen") else "") + "---|---|---|"]

    def f(v: dict, k: str) -> str:
        return f"{v[k]:.3f}" if k in v else ""

    for name, v in r["rows"].items():
        t = v.get("train", {})
        cells = [f(v, k) for k in ("top1", "top5", "mAP", "iconic_recall@1", "iconic_recall@5", "held_up_top1",
                                   "clip_frame_top1", "clip_presentation_top1")]
        if r.get("unseen"):
            cells += [f(v, k) for k in ("unseen_top1", "unseen_top5", "unseen_among_new_top1",
                                        "unseen_equal_gallery_top1")]
        pool = f", {t['pool_views']} views in {t['pool_s'] / 60:.1f} min" if "pool_views" in t else ""
        cells += [str(t.get("epochs", "")), str(t.get("img_per_s", "")),
                  f"{t.get('precision', '')}, {t.get('head', '')}{pool}" if t else ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, v in r["rows"].items():
        cats = ", ".join(f"{k[5:]} {v[k]:.3f}" for k in sorted(v) if k.startswith("top1_"))
        if cats:
            lines += ["", f"{name}: val top-1 by category: {cats}; commonest confusions (val -> top-1): "
                      + "; ".join(f"{c} ({n})" for c, n in v.get("confusions", []))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
