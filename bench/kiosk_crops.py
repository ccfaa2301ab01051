"""What a kiosk camera shows the encoder, for measuring encoders (bench only).

Two query sets of held-up products, each a list of (BGR crop, item id):

- ``held_up_val``: every Grocery Store val photo held up in front of a
  counter: the photo turned and shrunk onto a background that is a blurred,
  darkened val photo of another product (a busy store scene, unlike the
  smooth generated counters training uses), cropped to its box with a margin
  as the runtime crops what differs from the empty counter.
- ``clip_crops``: frames of a kiosk clip (val-clip.mp4) while a product is
  fully in view, cropped to the box of what differs from the empty counter
  just before it came in (the median of the frames between presentations),
  with the same margin; one crop every ``step`` frames.

Both are for measuring only: training never sees val photos or the clip.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np

__all__ = ["held_up_val", "clip_crops", "box_crop", "MARGIN"]

MARGIN = 0.1  # share of the box side added on every side, then squared


def box_crop(frame: np.ndarray, box: tuple[int, int, int, int], margin: float = MARGIN) -> np.ndarray:
    """The square around box (x0, y0, x1, y1) grown by ``margin``, clipped to the frame."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = frame.shape[:2]
    a, b = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    return frame[b:int(min(h, cy + side / 2)), a:int(min(w, cx + side / 2))]


def held_up_val(entries, seed: int = 0, canvas: int = 480) -> list[tuple[np.ndarray, str]]:
    """Each val photo held up in front of a blurred photo of another product."""
    from models.images import read_image

    rng = np.random.default_rng(seed)
    photos = [(read_image(e.path), e.item_id) for e in entries]
    out = []
    for i, (img, item) in enumerate(photos):
        j = int(rng.integers(len(photos) - 1))
        bg_src = photos[j + (j >= i)][0]
        bg = cv2.GaussianBlur(cv2.resize(bg_src, (canvas, canvas)), (0, 0), 12) * rng.uniform(0.5, 0.9)
        side = canvas * rng.uniform(0.45, 0.75)
        h, w = img.shape[:2]
        scale = side / max(h, w)
        a = math.radians(rng.uniform(-12, 12))
        c = np.array([canvas / 2 + rng.uniform(-0.15, 0.15) * canvas, canvas / 2 + rng.uniform(-0.1, 0.1) * canvas])
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64) - [w / 2, h / 2]
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        dst = (corners * scale) @ rot.T + c
        m = cv2.getPerspectiveTransform(np.float32(corners + [w / 2, h / 2]), np.float32(dst))
        frame = bg.astype(np.uint8)
        cv2.warpPerspective(img, m, (canvas, canvas), dst=frame, borderMode=cv2.BORDER_TRANSPARENT)
        x0, y0 = np.clip(dst.min(axis=0), 0, canvas).astype(int)
        x1, y1 = np.clip(dst.max(axis=0), 0, canvas).astype(int)
        out.append((box_crop(frame, (x0, y0, x1, y1)), item))
    return out


def _segments(clip_csv: Path, items_by_class: dict[int, str]) -> list[tuple[int, int, str]]:
    with open(clip_csv, newline="") as f:
        return [(int(r["start_frame"]), int(r["end_frame"]), items_by_class[int(r["class_id"])])
                for r in csv.DictReader(f)]


def clip_crops(clip: Path, clip_csv: Path, items_by_class: dict[int, str], step: int = 3,
               threshold: int = 30) -> list[tuple[np.ndarray, str, int]]:
    """(crop, item id, presentation index) for every ``step``-th fully-in-view frame."""
    segs = _segments(clip_csv, items_by_class)
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    out = []
    for k, (s, e, item) in enumerate(segs):
        prev_end = segs[k - 1][1] if k else -1
        gap = list(range(prev_end + 1, s))
        mid = gap[len(gap) // 3: 2 * len(gap) // 3] or gap[:1] or [max(0, s - 1)]
        if k == 0:
            mid = list(range(0, max(1, min(15, s // 2))))
        empty = np.median(np.stack([frames[i] for i in mid]), axis=0).astype(np.int16)
        for i in range(s, min(e + 1, len(frames)), step):
            diff = np.abs(frames[i].astype(np.int16) - empty).max(axis=2)
            mask = cv2.morphologyEx((diff > threshold).astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
            ys, xs = np.nonzero(mask)
            if len(xs) < 100:
                continue
            box = (int(np.percentile(xs, 1)), int(np.percentile(ys, 1)), int(np.percentile(xs, 99)) + 1,
                   int(np.percentile(ys, 99)) + 1)
            out.append((box_crop(frames[i], box), item, k))
    return out
