"""Run folders: weights as safetensors (never pickle), everything else as JSON.

    RUN_DIR/
      config.json          {"run_id", "net": NetConfig, "train": {...}}  (written once, at start)
      best.safetensors     model weights with the best validation retrieval (or the last, if none)
      last.safetensors     model weights at the last save
      optim.safetensors    optimizer tensors at the last save (for --resume)
      state.json           step, epoch, best score, optimizer scalars, RNG seeds
      metrics.jsonl        one JSON object per logged step / validation
      curves.png           training curves
      head.safetensors     the whitened head fitted on the best weights (trainer/whiten.py),
      head.json            what it was fitted on, and the sha256 of the weights it belongs to

Export and resume rebuild the model from the run folder alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.bundle import atomic_write_bytes, sha256_file
from models.errors import KioskError
from models.netconfig import NetConfig
from models.network import AutoEncoder

__all__ = ["RunError", "write_config", "read_config", "save_weights", "load_model", "load_run",
           "save_json", "read_json", "weights_path", "head_fits", "fitted_head"]


log = logging.getLogger(__name__)


class RunError(KioskError):
    """A run folder is missing, incomplete or inconsistent."""


def save_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: unreadable ({exc})") from None


def write_config(run_dir: Path, run_id: str, net: NetConfig, train: dict[str, Any]) -> None:
    save_json(run_dir / "config.json", {"run_id": run_id, "net": net.model_dump(mode="json"), "train": train})


def read_config(run_dir: Path) -> tuple[str, NetConfig, dict[str, Any]]:
    cfg = read_json(Path(run_dir) / "config.json")
    try:
        return str(cfg["run_id"]), NetConfig.model_validate(cfg["net"]), dict(cfg.get("train", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{run_dir}/config.json: invalid ({exc})") from None


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """safetensors, written to a temp file and renamed (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def weights_path(run_dir: Path, which: str) -> Path:
    """``best`` falls back to ``last`` while no validation has chosen one."""
    weights = Path(run_dir) / f"{which}.safetensors"
    if not weights.exists() and which == "best":
        weights = Path(run_dir) / "last.safetensors"
    if not weights.exists():
        raise RunError(f"{weights}: missing (has the run saved a checkpoint yet?)")
    return weights


def load_model(run_dir: str | Path, which: str = "best",
               head: bool = True) -> tuple[AutoEncoder, NetConfig, str]:
    """Rebuild the autoencoder of a run with its ``best`` or ``last`` weights;
    with ``head`` (the default) the whitened head replaces the trained
    projection when the run has one fitted on exactly these weights
    (``model.embedding_head`` then says "whitened", and the encoder pools as
    the head was fitted)."""
    from trainer.whiten import HEAD_INFO, HEAD_WEIGHTS

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    run_id, net, _ = read_config(run_dir)
    weights = weights_path(run_dir, which)
    model = AutoEncoder(net)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except Exception as exc:  # safetensors raises its own error types
        raise RunError(f"{weights}: cannot load weights ({exc})") from None
    info = fitted_head(run_dir, which) if head else None
    if info is not None:
        _load_head(model, run_dir / HEAD_WEIGHTS)
        model.embedding_head = "whitened"
        model.embedding_blend = float(info.get("blend", 1.0))
        model.encoder.pool_power = _pool_power(info, run_dir / HEAD_INFO)
    model.eval()
    return model, net, run_id


def fitted_head(run_dir: Path, which: str = "best") -> dict | None:
    """The run's head.json when it has a whitened head fitted on exactly its
    ``which`` weights, else None."""
    from trainer.whiten import HEAD_INFO, HEAD_WEIGHTS

    run_dir = Path(run_dir)
    if not (run_dir / HEAD_WEIGHTS).exists():
        return None
    weights = weights_path(run_dir, which)
    info = read_json(run_dir / HEAD_INFO)
    if info.get("weights_sha256") == sha256_file(weights):
        return info
    if which == "best":
        log.warning("%s: fitted on other weights than %s; using the trained projection "
                    "(refit with `trainer head %s`)", run_dir / HEAD_WEIGHTS, weights.name, run_dir)
    return None


def _pool_power(info: dict, path: Path) -> float:
    """The head's pooling power (heads fitted before the option pool by the average)."""
    from trainer.whiten import MAX_POOL_POWER

    p = info.get("pool_power", 1.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1.0 <= p <= MAX_POOL_POWER:
        raise RunError(f"{path}: pool_power {p!r} is not from 1 to {MAX_POOL_POWER:g} (refit with `trainer head`)")
    return float(p)


def head_fits(run_dir: Path, which: str = "best") -> bool:
    """Whether the run has a whitened head fitted on exactly its ``which`` weights."""
    return fitted_head(run_dir, which) is not None


def _load_head(model: AutoEncoder, path: Path) -> None:
    """The head file: the projection, plus the backbone tensors it was fitted
    on when the backbone was blended with its ImageNet start (trainer/whiten.py)."""
    try:
        head = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise RunError(f"{path}: cannot load the head ({exc})") from None
    own = model.state_dict()
    proj = {"encoder.proj.weight", "encoder.proj.bias"}
    bad = [k for k, v in head.items() if k not in own or v.shape != own[k].shape
           or not (k in proj or k.startswith("encoder.backbone."))]
    if bad or not proj <= set(head):
        what = f"{bad[0]} {tuple(head[bad[0]].shape)}" if bad else f"no {sorted(proj - set(head))[0]}"
        raise RunError(f"{path}: {what}: not a head of this network")
    model.load_state_dict(head, strict=False)


load_run = load_model
