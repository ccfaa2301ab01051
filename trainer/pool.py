"""A fixed pool of distorted views, kept as the frozen stages' output.

With the first stages of a pretrained backbone frozen (``--freeze``), their
output for a given view never changes, and on a CPU they are the slow part:
full-resolution depthwise convolutions, half the forward pass or more. So
before training, every training photo gets ``views`` distorted views
(trainer.distort, kiosk views included), each run once through the frozen
stages; the loop then draws two of them per photo and step and runs only the
trainable stages. That trades variety (a fixed set of views per photo instead
of new ones every step; CutMix, drawn afresh every step, still mixes them)
for about twice the steps in the same time (bench/train_speed.py and
bench/results/ for the figures).

The pool is stored in bfloat16 (N x views x C x h x w: 0.45 GB for the
Grocery Store train split at 160 px, 8 views, four frozen stages) and built
at the start of every run, resumed ones too (seeded: the same pool again).

Under a time budget the pool may take at most a share of it
(``LoopConfig.pool_share``): it stops after the last view that fits, at
least two. Without AVX512-BF16 the frozen stages run in fp32 and 8 views of
1,893 photos at 224 px took about 11 of 30 minutes on a 2-core AVX2 CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
import torch

from models.lite0 import Lite0

__all__ = ["ViewPool", "paste_box_t"]

log = logging.getLogger(__name__)


def paste_box_t(x: torch.Tensor, partner: torch.Tensor, box: tuple[int, int, int, int, float]) -> torch.Tensor:
    """(N, C, H, W) with the box (y0, y1, x0, x1, _) taken from ``x[partner]`` (a copy)."""
    y0, y1, x0, x1, _ = box
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[partner][:, :, y0:y1, x0:x1]
    return out


class ViewPool:
    """``feats[i, v]``: the frozen stages' output for view v of training photo i."""

    def __init__(self, feats: torch.Tensor) -> None:
        self.feats = feats

    @property
    def views(self) -> int:
        return int(self.feats.shape[1])

    @property
    def nbytes(self) -> int:
        return self.feats.numel() * self.feats.element_size()

    @classmethod
    def build(cls, backbone: Lite0, chunks: Iterable[tuple[int, int, torch.Tensor]], n: int, views: int,
              device: torch.device, autocast: torch.dtype | None, budget_s: float | None = None) -> ViewPool:
        """Run every chunk ``(first photo, view, normalised batch)`` through the
        backbone's frozen part; ``chunks`` covers photos 0..n-1 for each view,
        view after view (the trainer makes them on its batch thread while the
        network runs). With ``budget_s``, no view is started that would end
        past it at the pace of those before, once two are done."""
        t0 = time.monotonic()
        was = backbone.training
        backbone.eval()
        feats: torch.Tensor | None = None
        done = 0
        try:
            for s, v, x in chunks:
                with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                    h = backbone.frozen_part(x.to(device))
                if feats is None:
                    feats = torch.empty((n, views, *h.shape[1:]), dtype=torch.bfloat16, device=device)
                feats[s:s + len(h), v] = h.to(torch.bfloat16)
                if s + len(h) >= n:
                    done = v + 1
                    spent = time.monotonic() - t0
                    if budget_s is not None and 2 <= done < views and spent * (done + 1) / done > budget_s:
                        break
        finally:
            backbone.train(was)
        if feats is None or done == 0:
            raise ValueError("no photos to pool")
        if done < views:
            feats = feats[:, :done].clone()  # the views that fit the budget
        pool = cls(feats)
        log.info("view pool: %d photos x %d of %d views of %s in %.0f s (%.2f GB)", n, done, views,
                 tuple(feats.shape[2:]), time.monotonic() - t0, pool.nbytes / 1e9)
        return pool

    def pair(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two different views (one if the pool has one) of each row, as float32."""
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        a = rng.integers(0, self.views, len(rows))
        b = (a + rng.integers(1, self.views, len(rows))) % self.views if self.views > 1 else a
        return self.feats[r, torch.from_numpy(a)].float(), self.feats[r, torch.from_numpy(b)].float()
