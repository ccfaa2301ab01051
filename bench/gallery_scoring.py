"""Ways to fit the whitened head and to score the catalogue, tried on a
finished Lite0 run's features without retraining (none is the default).

The run's backbone is blended with its ImageNet start at the default 0.75
(trainer/whiten.py) and the pooled features are computed once for the train
photos, their mirror images, two distorted views of each (trainer.distort at
the training strength, half of them held up in front of a counter) and the val
photos. Then, with the val photos ranked against the train photos as
bench/retrieval.py ranks them (``--unseen``: the run was trained without
every 4th product, each enrolled from its first 5 train photos):

- the head fitted on the clean photos (the default), on them plus their mirror
  images, plus the distorted views, or on the distorted views alone;
- the gallery as it is (the default), with mirror images added or averaged in,
  each photo's vector moved toward its product's mean direction by ``beta``
  ("smooth"; 100 is in effect the product's mean alone), or replaced by the
  mean of its k nearest catalogue vectors, itself among them (database-side
  augmentation, "dba");
- products scored by their best photo less their impostor statistics (Z-norm:
  the mean and spread of the best scores other products' catalogue photos get
  against them), or at the same quantile of every product's photo scores
  (the ceil(n/5)-th best of n photos), or by their mean vector.

    python bench/gallery_scoring.py RUN_DIR [--unseen] [--features CACHE.npz]

The feature pass takes 8 minutes on a 2-core AVX2 CPU; ``--features`` keeps
it (and reuses it when the file exists). Writes
bench/results/gallery-scoring-<time>.json/.md.
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

from bench.retrieval import ENROL_PHOTOS, cpu_flags, first_photos, held_out_items  # noqa: E402
from trainer.retrieval_metrics import retrieval_report, top_k_accuracy  # noqa: E402

BLEND = 0.75


def features(run: Path, data: Path) -> dict[str, np.ndarray]:
    """Pooled features of the train photos (clean, mirrored, 2 distorted views) and the val photos."""
    import torch

    from bench.blend import blended_encoder
    from models.catalogue import iter_images, load_catalogue
    from models.preprocess import normalise_rgb, preprocess, to_uint8_rgb
    from trainer import checkpoint as ck
    from trainer.data import CACHE_SCALE, cache_spec
    from trainer.distort import DEFAULT_KIOSK, DEFAULT_MIN_AREA, distort

    _, net, _ = ck.read_config(run)
    enc = blended_encoder(run, BLEND)
    enc.eval()

    def pooled(x: list[np.ndarray]) -> np.ndarray:
        t = torch.from_numpy(np.stack(x)).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return enc.pooled(enc.feature_map(t)).float().numpy()

    def one_split(split: str) -> dict[str, np.ndarray]:
        views = split == "train"  # the mirrored and distorted views: train photos only
        entries = [e for e in load_catalogue(data / split).entries if e.item_id]
        f, fm, fd, labs, batch, dbatch = [], [], [], [], [], []

        def flush() -> None:
            if batch:
                f.append(pooled(batch))
                if views:
                    fm.append(pooled([b[:, :, ::-1].copy() for b in batch]))
                    fd.append(pooled(dbatch))
            batch.clear()
            dbatch.clear()

        for e, img in iter_images(entries):
            batch.append(preprocess(img, net.input))
            labs.append(e.item_id)
            if views:
                big = to_uint8_rgb(img, cache_spec(net.input, CACHE_SCALE))
                for v in range(2):
                    view = distort(big, net.input.size, np.random.default_rng([7, len(labs), v]), 1.0,
                                   DEFAULT_MIN_AREA, DEFAULT_KIOSK)
                    dbatch.append(normalise_rgb(view, net.input))
            if len(batch) == 64:
                flush()
        flush()
        out = {f"{split}_f": np.concatenate(f), f"{split}_l": np.array(labs)}
        if views:
            out["train_fm"] = np.concatenate(fm)
            out["train_fd"] = np.concatenate(fd).reshape(-1, 2, f[0].shape[1])
        return out

    return {**one_split("train"), **one_split("val")}


def _norm(y: np.ndarray) -> np.ndarray:
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def smooth(g: np.ndarray, labs: np.ndarray, beta: float) -> np.ndarray:
    out = g.copy()
    for k in np.unique(labs):
        m = labs == k
        out[m] = g[m] + beta * _norm(g[m].mean(0, keepdims=True))
    return _norm(out)


def dba(g: np.ndarray, k: int) -> np.ndarray:
    idx = np.argsort(-(g @ g.T), axis=1)[:, :k]
    return _norm(g[idx].sum(1))


def class_max(sim: np.ndarray, glab: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.stack([sim[:, glab == c].max(1) for c in classes], 1)


def impostor_stats(cm: np.ndarray, glab: np.ndarray, classes: np.ndarray,
                   top: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per product: mean and spread of the best score each other product's
    photo gets against it (its ``top`` share of highest, or all), from the
    catalogue's own best scores per product ``cm`` (photos x products)."""
    mu, sd = [], []
    for j, c in enumerate(classes):
        v = cm[glab != c, j]
        if top:
            v = np.sort(v)[-max(5, int(len(v) * top)):]
        mu.append(v.mean())
        sd.append(v.std())
    return np.array(mu), np.array(sd)


def evaluate(feats: dict[str, np.ndarray], held: set[str]) -> dict[str, dict[str, float]]:
    from trainer.whiten import fit_whitening

    ftr, fm, fd, ltr = feats["train_f"], feats["train_fm"], feats["train_fd"], feats["train_l"]
    fva, lva = feats["val_f"], feats["val_l"]
    new = np.array([x in held for x in ltr], dtype=bool)
    keep = ~new | first_photos(ltr, ENROL_PHOTOS)
    q = np.array([x in held for x in lva], dtype=bool)
    gl = ltr[keep]
    classes = np.unique(gl)
    rows: dict[str, dict[str, float]] = {}

    def photos(name: str, eva: np.ndarray, gal: np.ndarray, glab: np.ndarray) -> None:
        if not held:
            r = retrieval_report(eva @ gal.T, lva, glab, ks=(1, 5))
            rows[name] = {k: round(float(r[k]), 4) for k in ("top1", "top5", "mAP")}
            return
        rows[name] = {}
        for part, m in (("unseen", q), ("trained", ~q)):
            r = retrieval_report(eva[m] @ gal.T, lva[m], glab, ks=(1, 5))
            rows[name].update({f"{part}_{k}": round(float(r[k]), 4) for k in ("top1", "top5")})

    def products(name: str, score: np.ndarray) -> None:
        parts = (("", np.ones(len(lva), bool)),) if not held else (("unseen_", q), ("trained_", ~q))
        rows[name] = {f"{p}top{k}": round(top_k_accuracy(score[m], lva[m], classes, k), 4) for p, m in parts for k in (1, 5)}

    fits = {"clean": (ftr[~new], ltr[~new]),
            "clean + mirrored": (np.concatenate([ftr[~new], fm[~new]]), np.tile(ltr[~new], 2)),
            "clean + 2 distorted": (np.concatenate([ftr[~new], fd[~new, 0], fd[~new, 1]]), np.tile(ltr[~new], 3)),
            "2 distorted": (np.concatenate([fd[~new, 0], fd[~new, 1]]), np.tile(ltr[~new], 2))}
    for fit, (ff, fl) in fits.items():
        w = fit_whitening(ff, fl, 128)

        def emb(x: np.ndarray, w=w) -> np.ndarray:
            return _norm(x @ w.weight.T + w.bias)

        etr, em, eva = emb(ftr)[keep], emb(fm)[keep], emb(fva)
        photos(f"head on {fit}", eva, etr, gl)
        photos(f"head on {fit}; mirror images added", eva, np.concatenate([etr, em]), np.tile(gl, 2))
        photos(f"head on {fit}; each photo averaged with its mirror", eva, _norm(etr + em), gl)
        for beta in (0.25, 0.5, 1.0, 2.0, 100.0):
            photos(f"head on {fit}; smooth {beta:g}", eva, smooth(etr, gl, beta), gl)
        for k in (2, 3):
            photos(f"head on {fit}; dba k={k}", eva, dba(etr, k), gl)
        if fit == "clean":
            cmx = class_max(eva @ etr.T, gl, classes)
            own = class_max(etr @ etr.T, gl, classes)  # the catalogue against itself, once
            for top in (None, 0.1, 0.02):
                mu, sd = impostor_stats(own, gl, classes, top)
                share = "all" if top is None else f"top {top:g}"
                products(f"z-norm ({share} impostors)", (cmx - mu) / sd)
                products(f"less impostor mean ({share})", cmx - mu)
                products(f"less half the impostor mean ({share})", cmx - 0.5 * mu)
            sim = eva @ etr.T
            counts = [int((gl == c).sum()) for c in classes]
            srt = [np.sort(sim[:, gl == c], 1)[:, ::-1] for c in classes]
            for nmin in (5, 8):
                ks = [max(1, int(np.ceil(n / nmin))) for n in counts]
                products(f"the ceil(n/{nmin})-th best photo", np.stack([s[:, k - 1] for s, k in zip(srt, ks, strict=True)], 1))
                products(f"mean of the ceil(n/{nmin}) best photos", np.stack([s[:, :k].mean(1) for s, k in zip(srt, ks, strict=True)], 1))
            means = np.stack([_norm(etr[gl == c].mean(0, keepdims=True))[0] for c in classes])
            products("product mean vector", eva @ means.T)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a Lite0 run folder written by `trainer fit`")
    ap.add_argument("--unseen", action="store_true", help="the run was trained without every 4th product")
    ap.add_argument("--features", type=Path, help="npz cache of the feature pass (read if it exists)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/grocery")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    if a.features is not None and a.features.exists():
        with np.load(a.features) as z:
            feats = {k: z[k] for k in z.files}
    else:
        feats = features(a.run, a.data)
        if a.features is not None:
            np.savez(a.features, **feats)
    held = held_out_items(a.data / "classes.csv") if a.unseen else set()
    t0 = time.monotonic()
    rows = evaluate(feats, held)
    stamp = time.strftime("%Y%m%d-%H%M%S") + (f"-{a.tag}" if a.tag else "")
    result = {"time": stamp, "run": str(a.run), "blend": BLEND, "unseen": a.unseen, "cpu_count": os.cpu_count(),
              "cpu_flags": cpu_flags(), "seconds": round(time.monotonic() - t0, 1), "rows": rows}
    cols = (["unseen_top1", "unseen_top5", "trained_top1", "trained_top5"] if a.unseen
            else ["top1", "top5", "mAP"])
    md = [f"Head fits and catalogue scoring on run {a.run.name} (blend {BLEND}"
          f"{', trained without every 4th product' if a.unseen else ''}; val photos against the train photos).",
          "", "| variant | " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|---|" + "---|" * len(cols)]
    md += [f"| {name} | " + " | ".join(f"{r[c]:.3f}" if c in r else "" for c in cols) + " |"
           for name, r in rows.items()]
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / f"gallery-scoring-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.results / f"gallery-scoring-{stamp}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
