"""PNG helpers: contact sheets (grids of thumbnails with coloured frames and
captions) and training curves. Written atomically (temp file + rename)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from models.errors import KioskError

__all__ = ["grid", "write_png", "plot_curves", "GREEN", "RED", "GREY"]

GREEN = (40, 170, 40)
RED = (210, 40, 40)
GREY = (150, 150, 150)


def _cell(img: np.ndarray | None, size: int, frame: tuple[int, int, int] | None,
          caption: str) -> np.ndarray:
    cap_h = 12 if caption else 0
    cell = np.full((size + cap_h + 4, size + 4, 3), 255, np.uint8)
    if img is not None:
        thumb = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        cell[2:2 + size, 2:2 + size] = thumb
    if frame is not None:
        cv2.rectangle(cell, (0, 0), (size + 3, size + 3), frame, 2)
    if caption:
        cv2.putText(cell, caption[: max(4, size // 6)], (2, size + cap_h + 1), cv2.FONT_HERSHEY_SIMPLEX,
                    0.3, (0, 0, 0), 1, cv2.LINE_AA)
    return cell


def grid(rows: Sequence[Sequence[tuple[np.ndarray | None, tuple[int, int, int] | None, str]]],
         size: int = 80) -> np.ndarray:
    """Rows of (RGB image or None, frame colour or None, caption) -> one RGB image."""
    n_cols = max((len(r) for r in rows), default=1)
    blank = _cell(None, size, None, " ")
    lines = []
    for r in rows:
        cells = [_cell(img, size, fr, cap or " ") for img, fr, cap in r]
        cells += [blank] * (n_cols - len(cells))
        lines.append(np.concatenate(cells, axis=1))
    return np.concatenate(lines, axis=0) if lines else blank


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    path = Path(path)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KioskError(f"{path}: cannot write ({exc.strerror or exc})") from None


def plot_curves(metrics_jsonl: Path, out_png: Path) -> None:
    """Training loss terms and validation top-1 against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train: dict[str, list[tuple[int, float]]] = {}
    val: dict[str, list[tuple[int, float]]] = {}
    for line in metrics_jsonl.read_text().splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("kind") == "val":
            for k in ("val_top1", "val_mAP"):
                if m.get(k) is not None:
                    val.setdefault(k[len("val_"):], []).append((m["step"], m[k]))
        elif m.get("kind") == "train":
            for k, v in m.items():
                if k.startswith("loss") and v is not None:
                    train.setdefault(k, []).append((m["step"], v))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, pts in sorted(train.items()):
        a1.plot(*zip(*pts, strict=False), label=k)
    a1.set_xlabel("step")
    a1.set_title("training loss")
    if train:
        a1.legend(fontsize=7)
    for k, pts in sorted(val.items()):
        a2.plot(*zip(*pts, strict=False), marker="o", label=k)
    a2.set_xlabel("step")
    a2.set_title("validation (held-out photos)")
    if val:
        a2.legend(fontsize=7)
    a2.set_ylim(0, 1)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, out_png)
