"""Kiosk views: a catalogue photo as a kiosk camera frames it.

The device crops each frame to what differs from the empty counter, with a
margin (edge_runtime), so the encoder sees the product held up: smaller than
the view, tilted, with counter showing around it, sometimes cut off at an
edge. Catalogue photos are close-ups that fill the frame; without such views
in training, an encoder has never seen counter around a product.

A view is the photo (or a crop of it) warped onto a generated counter: a
smooth gradient between two colours, with some low-frequency mottling and,
sometimes, wood-like grain. Counters are generated, never photographed: the
only photos are the catalogue's own. Everything is driven by the generator
passed in, like trainer.distort, which applies lighting, blur, a hand, noise
and JPEG on top.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["counter", "place_on_counter"]


def counter(size: int, rng: np.random.Generator) -> np.ndarray:
    """A generated empty counter, float32 RGB ``size`` x ``size``."""
    c0 = rng.uniform(20, 235, 3).astype(np.float32)
    c1 = np.clip(c0 + rng.normal(0, 45, 3), 0, 255).astype(np.float32)
    t = np.linspace(-1, 1, size, dtype=np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = 0.5 + 0.5 * (math.cos(ang) * t[None, :] + math.sin(ang) * t[:, None]) / math.sqrt(2)
    bg = c0 + (c1 - c0) * ramp[:, :, None]
    if rng.random() < 0.5:  # mottling: blurred noise, a few per cent of the brightness
        cells = max(2, size // 12)
        blot = cv2.resize(rng.normal(0, 1, (cells, cells)).astype(np.float32), (size, size),
                          interpolation=cv2.INTER_CUBIC)
        bg *= (1.0 + rng.uniform(0.02, 0.1) * blot)[:, :, None]
    if rng.random() < 0.25:  # grain: stripes along one direction
        period = rng.uniform(3, 12) * size / 96
        phase = rng.uniform(0, 2 * math.pi, size).astype(np.float32)
        grain = np.sin(np.arange(size, dtype=np.float32)[None, :] * (2 * math.pi / period) + phase[:, None])
        grain = np.rot90(grain, int(rng.integers(4)))
        bg *= (1.0 + rng.uniform(0.03, 0.1) * grain)[:, :, None]
    return bg


def place_on_counter(img: np.ndarray, size: int, rng: np.random.Generator, s: float,
                     min_area: float) -> np.ndarray:
    """``img`` (uint8 RGB, square) warped onto a generated counter, float32.

    The product's side is 55-95% of the view (at strength 1), its quad turned
    by up to 20 degrees and tilted in perspective; it may reach past one edge
    by up to a fifth of its side, as when held up off-centre. A crop of the
    photo (area min_area..1, at least 0.6) stands in for the whole when the
    product itself was framed tightly."""
    h, w = img.shape[:2]
    area = max(min_area, 0.6) + (1 - max(min_area, 0.6)) * rng.random()
    cw, ch = w * math.sqrt(area), h * math.sqrt(area)
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    src = np.array([[x0, y0], [x0 + cw, y0], [x0 + cw, y0 + ch], [x0, y0 + ch]], np.float32)
    if rng.random() < 0.5 * min(s, 1.0):
        src = src[[1, 0, 3, 2]]  # mirror
    side = size * (1.0 - rng.uniform(0.05, 0.45) * min(s, 1.5))
    half = side / 2
    quad = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    a = math.radians(rng.uniform(-20, 20) * s)
    quad = quad @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    quad += rng.uniform(-0.06, 0.06, (4, 2)) * s * side
    room = max(0.0, (size - side) / 2) + 0.2 * side * min(s, 1.0)
    centre = size / 2 + rng.uniform(-room, room, 2)
    m = cv2.getPerspectiveTransform(src, (quad + centre).astype(np.float32))
    out = counter(size, rng)
    cv2.warpPerspective(img.astype(np.float32), m, (size, size), dst=out, flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_TRANSPARENT)
    return out
