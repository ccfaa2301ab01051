"""What the encoder is shown: the foreground's box, squared, with a margin.

The encoder was trained on close-up photos of products; a kiosk frame is
mostly counter. Cropping to the foreground box (presence.py) gives the
encoder the product at the scale it knows, wherever it is held, with no
region configured. ``margins`` are fractions of the box's longer side added on
every side (negative: an inset, the middle of the box); several margins give
several views whose embeddings are averaged. The square is kept inside the
frame (shifted, never padded) and resized to the encoder's input by the
bundle's own preprocessing (models/preprocess.py), so this works for any encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["square_box", "crop_views", "sharpness", "Box"]

Box = tuple[int, int, int, int]   # x, y, w, h


def square_box(box: Box, frame_wh: tuple[int, int], margin: float = 0.1,
               min_side: int = 32) -> Box:
    """The square around ``box`` grown by ``margin`` x its longer side on each
    side (shrunk when negative), at least ``min_side``, at most the frame's
    shorter side, moved inside the frame."""
    x, y, w, h = box
    W, H = frame_wh
    side = max(w, h) * (1.0 + 2.0 * margin)
    side = int(round(min(max(side, min_side, 1), W, H)))
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(round(min(max(cx - side / 2.0, 0), W - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0), H - side)))
    return x0, y0, side, side


def crop_views(image: np.ndarray, box: Box | None, margins: Sequence[float],
               min_side: int = 32) -> list[np.ndarray]:
    """One square crop of ``image`` per margin around ``box`` (None: the whole image)."""
    if box is None:
        return [image]
    H, W = image.shape[:2]
    out = []
    for m in margins:
        x, y, s, _ = square_box(box, (W, H), m, min_side)
        out.append(image[y:y + s, x:x + s])
    return out


def sharpness(image: np.ndarray, side: int = 96) -> float:
    """Variance of the Laplacian of the image, sampled down by an integer step
    to about ``side`` px (cheap: no resampling): low for a motion-blurred or
    defocused view. Compare within one presentation only: it depends on the
    product's own texture and size."""
    import cv2

    step = max(1, min(image.shape[:2]) // side)
    g = np.ascontiguousarray(image[::step, ::step])
    if g.ndim == 3:
        g = cv2.cvtColor(g[:, :, :3], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())
