"""Training throughput of the encoder, side by side: what buys epochs on a CPU.

Times the real training step (trainer.loop.TrainModule: two views through the
encoder, the decoder on one (or on --recon-share of the batch), the
cosine-margin classifier, invariance, AdamW)
on random batches, for each configuration in turn, round after round, and
reports the median images/s per configuration (the machine's speed drifts;
interleaving keeps the comparison fair). Also reports how much of the
forward pass the frozen stages take: the most that caching their outputs
could save.

    python bench/train_speed.py                 # the default set of configurations
    python bench/train_speed.py --rounds 5 --steps 3
    python bench/train_speed.py --only "224, freeze 5"   # the default and its decoder share

Writes bench/results/train-speed-<time>.md/.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval import cpu_flags  # noqa: E402
from models.netconfig import LITE0_INPUT, SCRATCH_INPUT, NetConfig  # noqa: E402
from models.network import AutoEncoder  # noqa: E402
from trainer.loop import LoopConfig, TrainModule, _configure_backbone, _param_groups, autocast_dtype  # noqa: E402
from trainer.losses import CosineMarginHead  # noqa: E402

# name -> (backbone, size, loop overrides, precision, channels_last, compile)
CONFIGS: dict[str, tuple] = {
    "scratch 96 px (before)": ("scratch", 96, {}, "bf16", True, False),
    "lite0 128, all trained, fp32": ("lite0", 128, {"freeze": 0}, "fp32", True, False),
    "lite0 128, all trained": ("lite0", 128, {"freeze": 0}, "bf16", True, False),
    "lite0 128, all trained, NCHW": ("lite0", 128, {"freeze": 0}, "bf16", False, False),
    "lite0 128, freeze 1": ("lite0", 128, {"freeze": 1}, "bf16", True, False),
    "lite0 128, freeze 2": ("lite0", 128, {"freeze": 2}, "bf16", True, False),
    "lite0 128, freeze 3": ("lite0", 128, {"freeze": 3}, "bf16", True, False),
    "lite0 128, freeze 2, no decoder": ("lite0", 128, {"freeze": 2, "w_recon": 0.0}, "bf16", True, False),
    "lite0 128, freeze 2, compiled": ("lite0", 128, {"freeze": 2}, "bf16", True, True),
    "lite0 96, freeze 2": ("lite0", 96, {"freeze": 2}, "bf16", True, False),
    "lite0 160, freeze 2": ("lite0", 160, {"freeze": 2}, "bf16", True, False),
    # The default since 2026-12-02: 224 px, 5 stages frozen and their output
    # cached (trainer/pool.py), so a step starts from it; "auto" precision.
    # The decoder's share of the batch (--recon-share) added 2026-12-07.
    "lite0 224, freeze 5, cached, recon 1": ("lite0", 224, {"freeze": 5, "cache_views": 8}, "auto", True, False),
    "lite0 224, freeze 5, cached, recon 0.5": ("lite0", 224, {"freeze": 5, "cache_views": 8, "recon_share": 0.5},
                                               "auto", True, False),
    "lite0 224, freeze 5, cached, recon 0.25": ("lite0", 224, {"freeze": 5, "cache_views": 8,
                                                                "recon_share": 0.25}, "auto", True, False),
    "lite0 224, freeze 5, cached, no decoder": ("lite0", 224, {"freeze": 5, "cache_views": 8, "w_recon": 0.0},
                                                "auto", True, False),
}


class Setup:
    def __init__(self, backbone: str, size: int, over: dict, precision: str, cl: bool, compiled: bool,
                 batch: int, classes: int = 81) -> None:
        spec = (LITE0_INPUT if backbone == "lite0" else SCRATCH_INPUT).model_copy(update={"size": size})
        net = NetConfig(backbone=backbone, input=spec)
        cfg = replace(LoopConfig(), **over)
        if backbone == "scratch":
            cfg = replace(cfg, freeze=0)
        model = AutoEncoder(net)
        _configure_backbone(model, cfg)
        self.module = TrainModule(model, CosineMarginHead(net.embedding_size, classes), cfg)
        fmt = torch.channels_last if cl else torch.contiguous_format
        self.module = self.module.to(memory_format=fmt)
        self.opt = torch.optim.AdamW(_param_groups(self.module, cfg), lr=1e-4)
        self.step_fn = torch.compile(self.module) if compiled else self.module
        self.dtype = autocast_dtype(torch.device("cpu"), precision)
        g = torch.Generator().manual_seed(0)
        self.x = [torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=fmt) for _ in range(3)]
        self.cached = bool(cfg.cache_views)
        if self.cached:  # the views as the pool holds them: the frozen stages' output
            for i in (0, 1):
                self.x[i] = model.encoder.backbone.frozen_part(self.x[i]).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, classes, (batch,), generator=g)
        self.batch = batch
        self.frozen = cfg.freeze

    def step(self) -> None:
        self.module.train()
        with torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            parts = self.step_fn(self.x[0], self.x[1], self.x[2], self.labels, cached=self.cached)
        self.opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.opt.step()

    @torch.no_grad()
    def frozen_share(self) -> float | None:
        """Share of the forward pass spent in the frozen stem and stages."""
        enc = self.module.model.encoder
        bb = getattr(enc, "backbone", None)
        if bb is None or bb.frozen is None or self.cached:
            return None
        x = torch.cat([self.x[0], self.x[1]])
        with torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            t0 = time.perf_counter()
            h = bb.run_blocks(bb.stem(x), 0, bb.frozen)
            t1 = time.perf_counter()
            bb.head(bb.run_blocks(h, bb.frozen))
            t2 = time.perf_counter()
        return (t1 - t0) / (t2 - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--only", help="comma-separated substrings: configurations to run")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    a = ap.parse_args()
    names = [n for n in CONFIGS if not a.only or any(s in n for s in a.only.split(","))]
    setups = {n: Setup(*CONFIGS[n], batch=a.batch) for n in names}
    for s in setups.values():  # warm-up (and compilation)
        s.step()
        s.step()
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        for n, s in setups.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                s.step()
            rates[n].append(a.steps * s.batch / (time.perf_counter() - t0))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names), flush=True)
    shares = {n: s.frozen_share() for n, s in setups.items()}
    base = float(np.median(rates[names[0]]))
    rows = [{"config": n, "img_per_s": round(float(np.median(rates[n])), 1),
             "min": round(min(rates[n]), 1), "max": round(max(rates[n]), 1),
             "vs_first": round(float(np.median(rates[n])) / base, 2),
             "frozen_forward_share": None if shares[n] is None else round(shares[n], 2)} for n in names]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {"time": stamp, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(), "batch": a.batch, "rounds": a.rounds,
              "steps": a.steps, "load_avg_1m_end": os.getloadavg()[0], "rows": rows}
    flags = ", ".join(k for k, v in result["cpu_flags"].items() if v)
    md = [f"Training step throughput (images/s; each image is two views + decoder on one), batch {a.batch}, "
          f"median of {a.rounds} rounds x {a.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores (flags: {flags}; "
          f"load {result['load_avg_1m_end']:.1f} at the end).", "",
          "| configuration | img/s (median) | min-max | vs first | frozen share of forward |", "|---|---|---|---|---|"]
    for r in rows:
        share = "" if r["frozen_forward_share"] is None else f"{r['frozen_forward_share']:.2f}"
        md.append(f"| {r['config']} | {r['img_per_s']} | {r['min']}-{r['max']} | {r['vs_first']} | {share} |")
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / f"train-speed-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.results / f"train-speed-{stamp}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
