"""How a finished Lite0 run's last feature map is pooled before its whitened
head is fitted: the global average the network is trained with, against
generalised-mean pooling ("GeM", Radenovic et al., TPAMI 2019:
``mean(x ** p) ** (1 / p)`` per channel, p = 1 the average, large p toward
the maximum) and the maximum itself.

For each blend: the run's best backbone is blended with its ImageNet start
(trainer.whiten.blend_backbone), the feature maps of the train and val photos
are computed once and pooled every way, the whitened head is refitted on each
pooling's train features, and the val photos are ranked against the train
photos as bench/retrieval.py ranks them (``--unseen``: the run was trained
without every 4th product, each enrolled from its first 5 train photos). The
run folder is only read.

    python bench/pooling.py RUN_DIR [--blends 0.75,0] [--unseen] [--tag TAG]

One feature pass per blend, about 4 minutes on a 2-core AVX2 CPU. Writes
bench/results/pooling-<time>.json/.md.
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

from bench.blend import blended_encoder, figures, parse_blends, write_report  # noqa: E402
from bench.retrieval import cpu_flags, held_out_items, run_rate  # noqa: E402
from models.network import GEM_EPS  # noqa: E402

POOLINGS = ("average", "gem 2", "gem 3", "gem 4", "max")


def pool_all(fmap):
    """(B, C, H, W) feature map -> (B, len(POOLINGS) * C): every pooling, side by side."""
    import torch

    from models.network import gem

    return torch.cat([fmap.amax(dim=(2, 3)) if name == "max" else
                      gem(fmap, 1.0 if name == "average" else float(name.split()[1])) for name in POOLINGS], 1)


def pooled_features(encoder, net, entries: dict) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{pooling: {split: (features, labels)}}, one pass over each split's photos."""
    from trainer.whiten import _pooled_features

    out: dict[str, dict] = {name: {} for name in POOLINGS}
    for split, ents in entries.items():
        feats, labels = _pooled_features(encoder, ents, net, pool=pool_all)
        for name, part in zip(POOLINGS, np.split(feats, len(POOLINGS), axis=1), strict=True):
            out[name][split] = (part, labels)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a Lite0 run folder written by `trainer fit`")
    ap.add_argument("--blends", default="0.75", help="comma-separated shares of the fine-tuned backbone")
    ap.add_argument("--unseen", action="store_true", help="the run was trained without every 4th product")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/grocery")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    from models.catalogue import load_catalogue
    from trainer import checkpoint as ck

    blends = parse_blends(ap, a.blends)
    _, net, _ = ck.read_config(a.run)
    if net.backbone != "lite0":
        ap.error(f"{a.run}: backbone {net.backbone}; this compares Lite0 poolings")
    held = held_out_items(a.data / "classes.csv") if a.unseen else set()
    entries = {s: [e for e in load_catalogue(a.data / s).entries if e.item_id] for s in ("train", "val")}
    try:
        a.results.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--results {a.results}: {e.strerror}")
    rows = {}
    for b in blends:
        t0 = time.monotonic()
        feats = pooled_features(blended_encoder(a.run, b), net, entries)
        seconds = round(time.monotonic() - t0, 1)
        for name, f in feats.items():
            rows[f"blend {b:g}, {name}"] = figures(f, net.embedding_size, held)
            print(json.dumps({f"blend {b:g}, {name}": rows[f"blend {b:g}, {name}"]}), flush=True)
        rows[f"blend {b:g}, {POOLINGS[0]}"]["seconds"] = seconds  # the feature pass, all poolings
    stamp = time.strftime("%Y%m%d-%H%M%S") + (f"-{a.tag}" if a.tag else "")
    result = {"time": stamp, "run": str(a.run), "epochs": run_rate(a.run)["epochs"], "unseen": a.unseen,
              "gem_eps": GEM_EPS, "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(), "rows": rows}
    write_report(a.results / f"pooling-{stamp}", result, "blend, pooling",
                 f"Pooling of the last feature map, whitened head refitted at each (run "
                 f"{a.run.parent.name}/{a.run.name}, {result['epochs']} epochs"
                 f"{', trained without every 4th product' if a.unseen else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
