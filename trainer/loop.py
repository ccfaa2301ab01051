"""The training loop behind `trainer fit` (the CLI is trainer/fit.py).

Each step: a batch of photos from the in-memory cache, two distorted views
each (made by a background thread, so OpenCV work overlaps the network), one
encoder pass over both views, then the weighted objective of trainer.losses.
Schedule, stopping and checkpoints follow one "progress" number in [0, 1]:
max(step / total steps, training time / training budget), agreed by all DDP
ranks. Training time leaves out the setup (the view pool, trainer.pool), so
warm-up and decay span the steps actually trained, and the run still ends
when the whole budget is spent.
Progressive resizing: views are cut at ``early_size`` until ``early_until``
of that progress, then at the input size (the batch thread reads its own
clock, so under a time budget DDP ranks may switch a few steps apart; each
rank's gradients are still averaged as usual).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models.errors import ConfigError
from models.lite0 import stage_blocks
from models.network import AutoEncoder
from trainer.data import ImageSet, batches
from trainer.ddp import Dist
from trainer.distort import DEFAULT_MIN_AREA, clean_view, cutmix_box, distort, paste_box
from trainer.embed import _normalise, embed_after_frozen, embed_uint8, frozen_outputs
from trainer.losses import CosineMarginHead, cosine_margin_loss, invariance, reconstruction
from trainer.pool import ViewPool, paste_box_t
from trainer.retrieval_metrics import mean_average_precision, top_k_accuracy

__all__ = ["LoopConfig", "Trainer", "lr_at", "autocast_dtype"]

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.03
    w_recon: float = 0.5
    w_metric: float = 1.0
    w_inv: float = 1.0
    recon_share: float = 1.0  # share of each batch's photos the decoder reconstructs (the denoising term's cost)
    scale: float = 16.0
    margin: float = 0.2
    strength: float = 1.0
    precision: str = "auto"
    min_area: float = DEFAULT_MIN_AREA
    kiosk: float = 0.0  # share of views held up in front of a generated counter
    cutmix: float = 0.0
    early_size: int = 0  # progressive resizing: views this many px (0 = off) ...
    early_until: float = 0.0  # ... until this share of the run, then the input size
    backbone_lr: float = 1.0  # pretrained backbone: its learning rate as a share of lr
    freeze: int = 0  # pretrained backbone: stem and this many stages kept at their weights
    drop_path: float = 0.0  # pretrained backbone: stochastic depth rate of its last block
    cache_views: int = 0  # pretrained backbone: views per photo kept as the frozen stages' output (0: none)
    pool_share: float = 0.25  # under --minutes: the most of the budget the view pool may take (>= 2 views)
    epochs: float | None = None
    minutes: float | None = None
    seed: int = 0
    val_fraction: float = 0.05  # share of each item's photos held out (runs from before the key: 0.05)
    val_every_s: float = 120.0
    save_every_s: float = 120.0
    log_every_s: float = 10.0
    progress: bool = True
    extra: dict = field(default_factory=dict)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Mixed precision for the forward pass: fp16 (+ loss scaling) on CUDA; on a
    CPU with native bfloat16, bf16 (1.6x the fp32 training throughput on the
    development VM's AVX512-BF16); None = plain fp32. Weights and optimizer
    stay fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "fp16":
        raise ConfigError(f"--precision fp16 needs a CUDA device, not {device}")
    if precision == "bf16" or (precision == "auto" and device.type == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return None


def lr_at(progress: float, base: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to 1% of ``base``."""
    if progress < warmup:
        return base * max(progress / warmup, 0.01)
    t = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return base * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def recon_count(n: int, share: float) -> int:
    """How many of a batch's ``n`` photos the decoder reconstructs: the first
    ``share`` of them, at least two (the decoder's BatchNorm needs more than
    one value per channel on a 1x1 feature map). The batch is shuffled, so
    every photo takes its turn; the decoder's upsampling convolutions at 56
    and 112 px are half of a cached Lite0 training step on a CPU (bench/train_speed.py)."""
    return min(n, max(2, round(n * share)))


class TrainModule(nn.Module):
    """Autoencoder + optional classifier head; forward returns the loss terms."""

    def __init__(self, model: AutoEncoder, head: CosineMarginHead | None, cfg: LoopConfig) -> None:
        super().__init__()
        self.model, self.head, self.cfg = model, head, cfg

    def two_views(self) -> bool:
        return self.cfg.w_inv > 0 or self.cfg.w_metric > 0

    def forward(self, v1: torch.Tensor, v2: torch.Tensor | None, clean: torch.Tensor,
                labels: torch.Tensor, labels_b: torch.Tensor | None = None,
                lam: float = 1.0, cached: bool = False) -> dict[str, torch.Tensor]:
        """Loss terms for views ``v1`` (and ``v2``): images, or with ``cached``
        the frozen stages' output for them (trainer.pool)."""
        c = self.cfg
        x = v1 if v2 is None else torch.cat([v1, v2])
        enc = self.model.encoder
        fmap = enc.backbone.after_frozen(x) if cached else enc.feature_map(x)
        emb = nn.functional.normalize(self.model.encoder.embed(fmap).float(), dim=1)
        n = v1.shape[0]
        parts: dict[str, torch.Tensor] = {}
        if c.w_recon > 0:
            k = recon_count(n, c.recon_share)
            parts["loss_recon"] = reconstruction(self.model.decoder(fmap[:k]), clean[:k])
        if c.w_metric > 0 and self.head is not None:
            labs = labels if v2 is None else torch.cat([labels, labels])
            labs_b = None if labels_b is None else labels_b if v2 is None else torch.cat([labels_b, labels_b])
            parts["loss_metric"] = cosine_margin_loss(self.head(emb), labs, c.scale, c.margin,
                                                      labels_b=labs_b, lam=lam)
        if c.w_inv > 0 and v2 is not None:
            parts["loss_inv"] = invariance(emb[:n], emb[n:])
        weights = {"loss_recon": c.w_recon, "loss_metric": c.w_metric, "loss_inv": c.w_inv}
        parts["loss"] = sum(weights[k] * v for k, v in parts.items())
        return parts


@dataclass
class Batch:
    step: int
    epoch: int
    v1: torch.Tensor
    v2: torch.Tensor | None
    clean: torch.Tensor
    labels: torch.Tensor
    labels_b: torch.Tensor | None = None  # CutMix partner's labels (None: batch not mixed)
    lam: float = 1.0  # share of each view left to its own photo
    cached: bool = False  # v1/v2 are the frozen stages' output from the view pool


def _with_end(items: Iterator[Any]) -> Iterator[Any]:
    yield from items
    yield None


class Prefetcher:
    """Makes batches (or any items) on a background thread (OpenCV releases
    the GIL); ``get`` returns None once a finite iterator is exhausted."""

    def __init__(self, make: Iterator[Any], depth: int = 3) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(make,), daemon=True)
        self._t.start()

    def _run(self, make: Iterator[Any]) -> None:
        try:
            for b in _with_end(make):
                while not self._stop.is_set():
                    try:
                        self._q.put(b, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # surfaced in the training thread
            self._q.put(exc)

    def get(self) -> Any:
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._t.join(timeout=5)


class Trainer:
    """Owns model, optimizer and data for one process; ``run`` trains until
    the budget is spent and returns the final step."""

    def __init__(self, model: AutoEncoder, data: ImageSet, train_idx: np.ndarray,
                 val_idx: np.ndarray, cfg: LoopConfig, d: Dist) -> None:
        self.model, self.data, self.cfg, self.d = model, data, cfg, d
        self.train_idx, self.val_idx = train_idx, val_idx
        self.spec = model.cfg.input
        n_classes = len(data.item_ids)
        has_labels = bool((data.labels[train_idx] >= 0).any())
        head = CosineMarginHead(model.cfg.embedding_size, n_classes) if (
            cfg.w_metric > 0 and n_classes > 0 and has_labels) else None
        _configure_backbone(model, cfg)
        if cfg.cache_views and (not cfg.freeze or cfg.early_size):
            raise ConfigError("--cache-views needs frozen stages (--freeze) and no progressive resizing "
                              "(--early-size 0): the pool holds the frozen stages' output at one size")
        self.pool: ViewPool | None = None
        self._val_frozen: dict[str, torch.Tensor] = {}  # validation photos through the frozen stages
        self.module = TrainModule(model, head, cfg).to(d.device, memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(_param_groups(self.module, cfg), lr=cfg.lr)
        self.autocast = autocast_dtype(d.device, cfg.precision)
        self.amp = self.autocast is torch.float16  # fp16 needs loss scaling; bf16 does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ddp_module: nn.Module = self.module
        if d.active:
            unused = head is None or cfg.w_recon == 0 or not self.module.two_views()
            self.ddp_module = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                find_unused_parameters=unused)
        self.step, self.epoch, self.elapsed_before = 0, 0, 0.0
        self.setup_s = 0.0  # of elapsed: building the view pool (left out of the schedule's clock)
        self._t0: float | None = None  # monotonic start of the current run() (read by the batch thread)
        self.best: float | None = None  # held-out mAP of best.safetensors
        self.best_top1: float | None = None
        self.best_step: int | None = None
        self.steps_per_epoch = sum(1 for _ in batches(len(train_idx), cfg.batch_size, 0, 0, d.rank, d.world))

    # -- data -------------------------------------------------------------
    def view_size(self, step: int) -> int:
        """Side of the training views at ``step``: ``early_size`` for the first
        ``early_until`` of the run (more epochs in the same time), then the input size."""
        c = self.cfg
        if not c.early_size or c.early_until <= 0:
            return self.spec.size
        elapsed = self.elapsed_before + (time.monotonic() - self._t0 if self._t0 is not None else 0.0)
        return c.early_size if self.progress(elapsed, step) < c.early_until else self.spec.size

    def _view(self, img: np.ndarray, size: int, key: list[int]) -> np.ndarray:
        c = self.cfg
        return distort(img, size, np.random.default_rng(key), c.strength, c.min_area, c.kiosk)

    def _pool_chunks(self, batch: int = 64) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(first photo, view, normalised views) for the view pool, photo by photo within each view."""
        n, size, seed, rank = len(self.train_idx), self.spec.size, self.cfg.seed, self.d.rank
        for v in range(self.cfg.cache_views):
            for s in range(0, n, batch):
                u8 = np.stack([self._view(self.data.images[self.train_idx[i]], size, [seed, rank, i, v, 5])
                               for i in range(s, min(n, s + batch))])
                yield s, v, _normalise(torch.from_numpy(u8), self.spec)

    def _pool_views(self, step: int, idx: np.ndarray) -> Batch:
        """Two pooled views of each photo; CutMix on the frozen stages' output
        (the box on its grid, the clean target's box scaled to pixels)."""
        assert self.pool is not None
        seed, size = self.cfg.seed, self.spec.size
        rng = np.random.default_rng([seed, step, self.d.rank, 4])
        h1, h2 = self.pool.pair(idx, rng)
        clean = _normalise(torch.from_numpy(np.stack(
            [clean_view(self.data.images[self.train_idx[i]], size) for i in idx])), self.spec)
        labels_np = self.data.labels[self.train_idx[idx]]
        labels_b, lam = None, 1.0
        if len(idx) > 1 and rng.random() < self.cfg.cutmix:
            partner = torch.roll(torch.arange(len(idx)), 1)
            grid = h1.shape[-1]
            box = cutmix_box(grid, rng)
            k = size // grid
            h1, h2 = paste_box_t(h1, partner, box), paste_box_t(h2, partner, box)
            clean = paste_box_t(clean, partner, (box[0] * k, box[1] * k, box[2] * k, box[3] * k, box[4]))
            labels_b, lam = torch.from_numpy(labels_np[partner.numpy()]), box[4]
        two = self.module.two_views()
        return Batch(step, 0, h1.contiguous(memory_format=torch.channels_last),
                     h2.contiguous(memory_format=torch.channels_last) if two else None, clean,
                     torch.from_numpy(labels_np), labels_b, lam, cached=True)

    def _views(self, step: int, idx: np.ndarray) -> Batch:
        if self.pool is not None:
            return self._pool_views(step, idx)
        size, seed = self.view_size(step), self.cfg.seed
        two = self.module.two_views()
        imgs = self.data.images[self.train_idx[idx]]

        def views(k: int) -> np.ndarray:
            return np.stack([self._view(im, size, [seed, step, self.d.rank, i, k]) for i, im in enumerate(imgs)])

        v1 = views(1)
        v2 = views(2) if two else None
        clean = np.stack([clean_view(im, size) for im in imgs])
        labels_np = self.data.labels[self.train_idx[idx]]
        labels_b, lam = None, 1.0
        mix_rng = np.random.default_rng([seed, step, self.d.rank, 3])
        if len(idx) > 1 and mix_rng.random() < self.cfg.cutmix:
            # CutMix: every view (both views and the clean target alike) gets the
            # same box cut from the next photo's, labels weighted by area
            partner = np.roll(np.arange(len(idx)), 1)
            box = cutmix_box(size, mix_rng)
            v1, clean = paste_box(v1, partner, box), paste_box(clean, partner, box)
            v2 = paste_box(v2, partner, box) if v2 is not None else None
            labels_b, lam = torch.from_numpy(labels_np[partner]), box[4]

        def t(a: np.ndarray) -> torch.Tensor:
            return _normalise(torch.from_numpy(a), self.spec)

        return Batch(step, 0, t(v1), t(v2) if v2 is not None else None, t(clean), torch.from_numpy(labels_np),
                     labels_b, lam)

    def _stream(self, start_step: int) -> Iterator[Batch]:
        step = start_step
        epoch, offset = divmod(start_step, self.steps_per_epoch)
        while True:
            it = batches(len(self.train_idx), self.cfg.batch_size, self.cfg.seed, epoch,
                         self.d.rank, self.d.world)
            for j, idx in enumerate(it):
                if j < offset:
                    continue
                b = self._views(step, idx)
                b.epoch = epoch
                yield b
                step += 1
            epoch, offset = epoch + 1, 0

    # -- validation -------------------------------------------------------
    def validate(self) -> dict[str, float] | None:
        """Held-out photos against the training photos (clean views): top-1 by
        item and mean average precision. The gallery is at most
        ``VAL_GALLERY_PER_ITEM`` evenly spaced photos of each item: encoding
        every training photo cost a quarter of a Lite0 run's time."""
        if len(self.val_idx) == 0 or not self.d.main:
            return None
        size = self.spec.size
        lab_train = _gallery(self.train_idx, self.data.labels, VAL_GALLERY_PER_ITEM)
        if len(lab_train) == 0:
            return None
        enc = self.model.encoder
        frozen = getattr(getattr(enc, "backbone", None), "frozen", None) is not None

        def emb(name: str, ix: np.ndarray) -> np.ndarray:
            imgs = (clean_view(self.data.images[i], size) for i in ix)
            if not frozen:
                return embed_uint8(enc, np.stack(list(imgs)), self.spec, self.d.device)
            # The frozen stages' output for these photos never changes: computed
            # at the first validation, then only the trained stages run (a
            # validation of a 224 px Lite0 run took 30 s of every 2 minutes).
            if name not in self._val_frozen:
                self._val_frozen[name] = frozen_outputs(enc, np.stack(list(imgs)), self.spec, self.d.device)
            return embed_after_frozen(enc, self._val_frozen[name])

        sim = emb("val", self.val_idx) @ emb("gallery", lab_train).T
        q, g = self.data.labels[self.val_idx], self.data.labels[lab_train]
        return {"top1": top_k_accuracy(sim, q, g, 1), "mAP": mean_average_precision(sim, q, g)}

    # -- the loop ---------------------------------------------------------
    def progress(self, elapsed: float, step: int | None = None) -> float:
        c = self.cfg
        p = 0.0
        if c.epochs is not None:
            p = max(p, (self.step if step is None else step) / max(1.0, c.epochs * self.steps_per_epoch))
        if c.minutes is not None:
            budget = c.minutes * 60.0
            setup = min(self.setup_s, 0.9 * budget)
            p = max(p, (elapsed - setup) / max(1e-6, budget - setup))
        return p

    def run(self, hooks: TrainHooks) -> int:
        c = self.cfg
        t0 = self._t0 = time.monotonic()
        last_val = last_save = last_log = t0
        seen, t_rate, sums, n_sums = 0, t0, {}, 0
        if c.cache_views and self.pool is None:
            budget = None if c.minutes is None else max(0.0, c.pool_share * c.minutes * 60.0 - self.elapsed_before)
            chunks = Prefetcher(self._pool_chunks())
            try:
                self.pool = ViewPool.build(self.model.encoder.backbone, iter(chunks.get, None),
                                           len(self.train_idx), c.cache_views, self.d.device, self.autocast,
                                           budget)
            finally:
                chunks.close()
            t_rate = time.monotonic()
            self.setup_s += self.d.max_float(t_rate - t0)  # one schedule on every DDP rank
            hooks.on_pool(self, self.pool.views, t_rate - t0)
        self.module.train()
        pre = Prefetcher(self._stream(self.step))
        try:
            while True:
                elapsed = self.d.max_float(self.elapsed_before + time.monotonic() - t0)
                p = self.progress(elapsed)
                if p >= 1.0:
                    break
                b = pre.get()
                self.epoch = b.epoch
                lr = lr_at(p, c.lr, c.warmup)
                for g in self.opt.param_groups:
                    g["lr"] = lr * g["lr_scale"]
                dev = self.d.device
                with torch.autocast(dev.type, dtype=self.autocast or torch.float32,
                                    enabled=self.autocast is not None):
                    parts = self.ddp_module(b.v1.to(dev), None if b.v2 is None else b.v2.to(dev),
                                            b.clean.to(dev), b.labels.to(dev),
                                            None if b.labels_b is None else b.labels_b.to(dev), b.lam,
                                            b.cached)
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(parts["loss"]).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                self.step += 1
                seen += len(b.labels) * self.d.world
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                n_sums += 1
                now = time.monotonic()
                rate = seen / max(1e-6, now - t_rate)
                hooks.on_step(self, p, {k: v / n_sums for k, v in sums.items()}, rate, lr)
                if now - last_log >= c.log_every_s:
                    hooks.log_train(self, {k: v / n_sums for k, v in sums.items()}, rate, lr)
                    sums, n_sums, last_log = {}, 0, now
                if now - last_val >= c.val_every_s:
                    hooks.validate(self)
                    last_val = time.monotonic()
                if now - last_save >= c.save_every_s:
                    hooks.save(self, self.elapsed_before + now - t0)
                    last_save = time.monotonic()
        finally:
            pre.close()
        self.elapsed_before += time.monotonic() - t0
        if n_sums:
            hooks.log_train(self, {k: v / n_sums for k, v in sums.items()}, seen / max(1e-6, time.monotonic() - t_rate), 0.0)
        hooks.validate(self)
        hooks.save(self, self.elapsed_before)
        return self.step


VAL_GALLERY_PER_ITEM = 8


def _gallery(train_idx: np.ndarray, labels: np.ndarray, per_item: int) -> np.ndarray:
    """At most ``per_item`` evenly spaced labelled photos of each item."""
    out = []
    for c in np.unique(labels[train_idx][labels[train_idx] >= 0]):
        ix = train_idx[labels[train_idx] == c]
        out += ix[np.unique(np.linspace(0, len(ix) - 1, num=min(per_item, len(ix))).astype(int))].tolist()
    return np.array(sorted(out), dtype=np.int64)


def _configure_backbone(model: AutoEncoder, cfg: LoopConfig) -> None:
    """Freezing and stochastic depth of a pretrained backbone (no-op for scratch)."""
    backbone = getattr(model.encoder, "backbone", None)
    if backbone is None:
        if cfg.freeze or cfg.drop_path or cfg.backbone_lr != 1.0:
            raise ConfigError("--freeze, --drop-path and --backbone-lr apply to a pretrained backbone only")
        return
    for i, b in enumerate(backbone._blocks):
        b.drop_path = cfg.drop_path * i / max(1, len(backbone._blocks))
    backbone.freeze(stage_blocks(cfg.freeze) if cfg.freeze > 0 else None)


def _param_groups(module: nn.Module, cfg: LoopConfig) -> list[dict]:
    """AdamW groups: weight decay on weights only (not biases or norms), and
    the pretrained backbone at ``backbone_lr`` times the rate of the new parts."""
    backbone = getattr(module.model.encoder, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups: dict[tuple[bool, bool], list] = {}
    for p in module.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in in_backbone, p.ndim > 1), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0,
             "lr_scale": cfg.backbone_lr if pre else 1.0}
            for (pre, decay), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))]


class TrainHooks:
    """Side effects of the loop (progress bar, metrics file, checkpoints), see trainer.fit."""

    def on_pool(self, tr: Trainer, views: int, seconds: float) -> None: ...

    def on_step(self, tr: Trainer, progress: float, losses: dict, rate: float, lr: float) -> None: ...

    def log_train(self, tr: Trainer, losses: dict, rate: float, lr: float) -> None: ...

    def validate(self, tr: Trainer) -> None: ...

    def save(self, tr: Trainer, elapsed: float) -> None: ...

