"""Synthetic kiosk scenes for the scene-model tests: a textured counter, a
product at a known box, light, shadows, a camera bump; written to a real mp4
and decoded by OpenCV like a camera clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

W, H = 320, 240


def counter(seed: int = 0, w: int = W + 40, h: int = H + 40) -> np.ndarray:
    """A wood-like counter (stripes with a little grain), float32 BGR, larger
    than the frame so that a camera bump can shift it."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3)
    stripes = np.sin(xx / 4.0 + 3 * grain)
    return np.array([60, 110, 160], np.float32) * (1 + 0.25 * stripes[:, :, None])


def product(seed: int = 1, side: int = 80) -> np.ndarray:
    """A colourful patterned square (a 'product'), uint8 BGR."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((side, side, 3), rng.integers(0, 255, 3), np.uint8)
    for _ in range(6):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(img, tuple(int(v) for v in rng.integers(0, side, 2)), int(rng.integers(6, side // 3)),
                   c, -1)
    return img


def frame(bg: np.ndarray, *, shift: tuple[int, int] = (0, 0), gain=1.0,
          item: np.ndarray | None = None, at: tuple[int, int] = (0, 0),
          shadow: tuple[int, int, int] | None = None, noise: float = 2.0,
          rng: np.random.Generator | None = None) -> np.ndarray:
    """One frame: the counter window at ``shift``, an optional shadow ellipse
    (cx, cy, r) at 0.6 brightness, the item pasted at ``at`` (x, y), times ``gain``
    (a number or per-channel BGR), plus sensor noise."""
    import cv2

    rng = rng or np.random.default_rng(0)
    dx, dy = shift
    img = bg[20 + dy:20 + dy + H, 20 + dx:20 + dx + W].copy()
    if shadow is not None:
        m = np.zeros((H, W), np.float32)
        cv2.circle(m, shadow[:2], shadow[2], 1.0, -1)
        m = cv2.GaussianBlur(m, (0, 0), 4)
        img *= (1 - 0.4 * m)[:, :, None]
    if item is not None:
        x, y = at
        img[y:y + item.shape[0], x:x + item.shape[1]] = item
    img = img * np.asarray(gain, np.float32) + rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def through_mp4(path: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Write the frames to an mp4v file and decode them back with OpenCV."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(img)
    cap.release()
    assert len(out) == len(frames)
    return out


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / float(aw * ah + bw * bh - inter)
