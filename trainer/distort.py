"""Distortions that model a kiosk camera looking at a hand-held product.

Every view is one perspective warp (scale + crop, rotation, perspective tilt,
mirror) of a pre-resized catalogue photo, then photometric damage in the
order a camera applies it: lighting and colour cast, blur (defocus or motion),
a hand occluding part of the product, sensor noise, JPEG compression.

Pure numpy/OpenCV on uint8 RGB arrays, driven only by the ``np.random.Generator``
passed in, so the same seed and image give the same view (the training loop
seeds one generator per (seed, step, image)). ``strength`` scales every
magnitude and probability (0 = clean centre view, 1 = default, >1 = harsher).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from models.errors import ConfigError
from trainer.kiosk_views import place_on_counter

__all__ = ["distort", "distort_seeded", "clean_view", "cutmix_box", "paste_box", "DEFAULT_STRENGTH",
           "DEFAULT_MIN_AREA", "DEFAULT_KIOSK", "check_min_area", "check_share"]

DEFAULT_STRENGTH = 1.0
DEFAULT_MIN_AREA = 0.45  # smallest crop, as a share of the photo, at strength 1
DEFAULT_KIOSK = 0.5  # share of views held up in front of a generated counter (trainer.kiosk_views)
_SKIN = np.array([[224, 172, 140], [198, 134, 100], [141, 85, 60], [255, 205, 170]], dtype=np.float32)


def check_min_area(min_area: float) -> float:
    """The --min-crop-area flag's value, or a ConfigError naming it."""
    if not 0.05 <= min_area <= 1:
        raise ConfigError(f"--min-crop-area must be in [0.05, 1], got {min_area}")
    return min_area


def check_share(flag: str, value: float) -> float:
    """A flag's share in [0, 1], or a ConfigError naming it."""
    if not 0 <= value <= 1:
        raise ConfigError(f"{flag} must be in [0, 1], got {value}")
    return value


def clean_view(img: np.ndarray, size: int) -> np.ndarray:
    """The undistorted view: the pre-resized square photo scaled to ``size``."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _warp(img: np.ndarray, size: int, rng: np.random.Generator, s: float,
          min_area: float = DEFAULT_MIN_AREA) -> np.ndarray:
    """Random crop (area 1 .. min_area at strength 1), aspect jitter, rotation, perspective, mirror."""
    h, w = img.shape[:2]
    area = max(0.05, 1.0 - (1.0 - min_area) * min(s, 1.2) * rng.random())
    aspect = math.exp(rng.uniform(-0.25, 0.25) * s)
    cw = min(w, w * math.sqrt(area * aspect))
    ch = min(h, h * math.sqrt(area / aspect))
    cx = rng.uniform(cw / 2, w - cw / 2) if w > cw else w / 2
    cy = rng.uniform(ch / 2, h - ch / 2) if h > ch else h / 2
    quad = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
    ang = math.radians(rng.uniform(-25, 25) * s)
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    quad = quad @ rot.T + rng.uniform(-0.08, 0.08, size=(4, 2)) * s * np.array([cw, ch])
    quad += np.array([cx, cy])
    dst = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], dtype=np.float32)
    if rng.random() < 0.5 * min(s, 1.0):
        dst = dst[[1, 0, 3, 2]]  # mirror (some kiosk cameras flip the image)
    m = cv2.getPerspectiveTransform(quad.astype(np.float32), dst)
    return cv2.warpPerspective(img, m, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)


def _lighting(x: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """Exposure, contrast, saturation, colour cast (white balance), gamma, a soft shadow."""
    gain = math.exp(rng.uniform(-0.35, 0.3) * s)
    cast = np.exp(rng.uniform(-0.12, 0.12, size=3) * s)
    contrast = math.exp(rng.uniform(-0.3, 0.25) * s)
    sat = math.exp(rng.uniform(-0.45, 0.3) * s)
    # gain * cast, then contrast about the image mean, then saturation about each
    # pixel's grey are all linear: one 3x4 colour matrix, applied in one pass.
    a = gain * cast
    mean = float(np.dot(a, cv2.mean(x)[:3]) / 3.0)
    towards_grey = sat * np.eye(3) + (1.0 - sat) / 3.0
    m = np.hstack([contrast * towards_grey * a[None, :], np.full((3, 1), (1.0 - contrast) * mean)])
    x = cv2.transform(x, m)
    if rng.random() < 0.4 * s:  # light falls off across the product
        n = x.shape[0]
        t = np.linspace(-1, 1, n, dtype=np.float32)
        ang = rng.uniform(0, 2 * math.pi)
        ramp = 1.0 + 0.25 * s * rng.uniform(0.3, 1) * (math.cos(ang) * t[None, :] + math.sin(ang) * t[:, None])
        x = x * ramp[:, :, None]
    x = np.clip(x, 0, 255)
    gamma = math.exp(rng.uniform(-0.25, 0.25) * s)
    return cv2.pow(x * (1.0 / 255.0), gamma) * 255.0


def _blur(x: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    n = x.shape[0]
    if rng.random() < 0.5:  # defocus
        sigma = rng.uniform(0.3, 1.2) * s * n / 64
        return cv2.GaussianBlur(x, (0, 0), sigma) if sigma > 0.1 else x
    length = max(2, int(round(rng.uniform(2, 7) * s * n / 64)))  # motion while held up
    k = np.zeros((length, length), np.float32)
    a = rng.uniform(0, math.pi)
    c, d = (length - 1) / 2, (length - 1) / 2
    p0 = (int(round(c - d * math.cos(a))), int(round(c - d * math.sin(a))))
    p1 = (int(round(c + d * math.cos(a))), int(round(c + d * math.sin(a))))
    cv2.line(k, p0, p1, 1.0, 1)
    return cv2.filter2D(x, -1, k / max(k.sum(), 1.0), borderType=cv2.BORDER_REFLECT_101)


def _hand(x: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """A skin-toned palm with fingers reaching in from one edge (up to ~25% of the view)."""
    n = x.shape[0]
    mask = np.zeros((n, n), np.uint8)
    side = int(rng.integers(4))
    depth = rng.uniform(0.12, 0.3) * min(s, 1.5) * n
    along = rng.uniform(0.2, 0.8) * n
    palm_c = (int(along), int(-n * 0.05))
    cv2.ellipse(mask, palm_c, (int(n * 0.22), int(depth)), 0, 0, 360, 255, -1)
    for f in range(int(rng.integers(2, 5))):
        fx = int(along + (f - 1.5) * n * 0.09 + rng.uniform(-2, 2))
        cv2.ellipse(mask, (fx, int(depth)), (max(1, int(n * 0.04)), int(depth * rng.uniform(0.4, 0.9))),
                    rng.uniform(-15, 15), 0, 360, 255, -1)
    mask = np.rot90(mask, side).copy()
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, n / 96)).astype(np.float32)[:, :, None] / 255.0
    skin = _SKIN[int(rng.integers(len(_SKIN)))] * rng.uniform(0.7, 1.1)
    shade = 1.0 - 0.25 * np.linspace(0, 1, n, dtype=np.float32)[None, :, None]
    return x * (1 - mask) + skin * shade * mask


# Sensor noise is cut from one fixed bank of standard normals at a random
# offset: drawing fresh normals was a quarter of the cost of a view.
_NOISE_BANK = np.random.default_rng(0x5EED).standard_normal(1 << 20, dtype=np.float32)


def _noise(x: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """Shot noise grows with brightness, read noise does not."""
    read = rng.uniform(1, 6) * s
    shot = rng.uniform(0, 0.6) * s
    sigma = cv2.sqrt(np.clip(x, 0, 255) * np.float32(shot**2) + np.float32(read**2))
    n = x.size
    if n < len(_NOISE_BANK):
        at = int(rng.integers(0, len(_NOISE_BANK) - n))
        unit = _NOISE_BANK[at:at + n].reshape(x.shape)
    else:
        unit = rng.standard_normal(x.shape, dtype=np.float32)
    return x + unit * sigma


def _jpeg(x: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    q = int(np.clip(95 - rng.uniform(0, 60) * s, 15, 95))
    ok, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else x


def distort(img: np.ndarray, size: int, rng: np.random.Generator,
            strength: float = DEFAULT_STRENGTH, min_area: float = DEFAULT_MIN_AREA,
            kiosk: float = 0.0) -> np.ndarray:
    """One camera-like view of ``img`` (HxWx3 uint8, any channel order) at ``size`` x ``size``;
    with probability ``kiosk`` the product is held up in front of a counter
    (trainer.kiosk_views), else the view is cut from the photo."""
    s = float(strength)
    if s <= 0:
        return clean_view(img, size)
    if kiosk > 0 and rng.random() < kiosk:
        x = place_on_counter(img, size, rng, s, min_area)
    else:
        x = _warp(img, size, rng, s, min_area).astype(np.float32)
    x = _lighting(x, rng, s)
    if rng.random() < min(0.5 * s, 0.9):
        x = _blur(x, rng, s)
    if rng.random() < min(0.3 * s, 0.6):
        x = _hand(x, rng, s)
    x = _noise(x, rng, s)
    out = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < min(0.4 * s, 0.8):
        out = _jpeg(out, rng, s)
    return out


def distort_seeded(img: np.ndarray, size: int, seed: int | tuple[int, ...],
                   strength: float = DEFAULT_STRENGTH, min_area: float = DEFAULT_MIN_AREA,
                   kiosk: float = 0.0) -> np.ndarray:
    """``distort`` with a fresh generator: same seed + image -> same view."""
    key = list(seed) if isinstance(seed, tuple) else [int(seed)]
    return distort(img, size, np.random.default_rng(key), strength, min_area, kiosk)


def cutmix_box(size: int, rng: np.random.Generator) -> tuple[int, int, int, int, float]:
    """A CutMix box (Yun et al., ICCV 2019) in a ``size`` x ``size`` view:
    (y0, y1, x0, x1, lam) where lam is the share of the view left to its own
    photo. The box covers 1 - U(0, 1) of the view before clipping at the edges."""
    cut = math.sqrt(1.0 - rng.random())
    h = w = int(round(size * cut))
    cy, cx = rng.integers(0, size, size=2)
    y0, y1 = int(np.clip(cy - h // 2, 0, size)), int(np.clip(cy + h - h // 2, 0, size))
    x0, x1 = int(np.clip(cx - w // 2, 0, size)), int(np.clip(cx + w - w // 2, 0, size))
    return y0, y1, x0, x1, 1.0 - (y1 - y0) * (x1 - x0) / float(size * size)


def paste_box(views: np.ndarray, partner: np.ndarray, box: tuple[int, int, int, int, float]) -> np.ndarray:
    """Views (N, S, S, 3) with the box cut from ``views[partner]`` (a copy)."""
    y0, y1, x0, x1, _ = box
    out = views.copy()
    out[:, y0:y1, x0:x1] = views[partner, y0:y1, x0:x1]
    return out
