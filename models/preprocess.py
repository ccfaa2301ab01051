"""The one preprocessing implementation, shared by trainer and device.

A camera frame or catalogue photo (HxWx3 uint8, BGR as OpenCV decodes it)
becomes a float32 NCHW tensor exactly as the encoder was trained on. The spec
travels with the model (checkpoint config, ONNX metadata, bundle manifest), so
the device reads it instead of being told.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["PreprocessSpec", "normalise_rgb", "preprocess", "preprocess_batch", "to_uint8_rgb"]


class PreprocessSpec(BaseModel):
    """How an image becomes the encoder's input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(96, ge=16, le=1024, description="square input side in pixels")
    resize: Literal["short_side_crop", "stretch"] = Field(
        "short_side_crop",
        description="short_side_crop: scale the short side to `size`, centre-crop; stretch: scale both sides",
    )
    mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel mean, RGB, on 0..1")
    std: tuple[float, float, float] = Field((0.25, 0.25, 0.25), description="per-channel std, RGB, on 0..1")
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("std values must be positive")
        return v


def _resize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = spec.size
    if spec.resize == "stretch":
        interp = cv2.INTER_AREA if (h > s or w > s) else cv2.INTER_LINEAR
        return cv2.resize(img, (s, s), interpolation=interp)
    scale = s / min(h, w)
    nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    y0, x0 = (nh - s) // 2, (nw - s) // 2
    return img[y0 : y0 + s, x0 : x0 + s]


def to_uint8_rgb(img_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize/crop a BGR uint8 image to ``spec.size`` and return it as RGB uint8 HxWx3."""
    if img_bgr.ndim == 2:
        img_bgr = np.repeat(img_bgr[:, :, None], 3, axis=2)
    if img_bgr.ndim != 3 or img_bgr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {img_bgr.shape}")
    img = _resize(np.ascontiguousarray(img_bgr[:, :, :3]), spec)
    return np.ascontiguousarray(img[:, :, ::-1])


def normalise_rgb(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 HxWx3 (already at spec.size) -> float32 3xHxW, mean/std normalised."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    # In place on one C-ordered copy: the same arithmetic, in the same order,
    # as (x * (1/255) - mean) / std, without three temporaries per frame.
    chw = rgb.transpose(2, 0, 1).astype(np.float32, order="C")
    chw *= np.float32(1.0 / 255.0)
    chw -= mean
    chw /= std
    return chw


def preprocess(img_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One BGR uint8 image -> float32 array of shape (3, size, size)."""
    return normalise_rgb(to_uint8_rgb(img_bgr, spec), spec)


def preprocess_batch(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """BGR uint8 images -> float32 NCHW batch, contiguous."""
    out = np.empty((len(images), 3, spec.size, spec.size), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = preprocess(img, spec)
    return out
