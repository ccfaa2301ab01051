"""Reading images from disk without ever crashing on a bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.errors import ImageError

__all__ = ["IMAGE_SUFFIXES", "read_image", "is_image_file"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MAX_IMAGE_BYTES = 64 * 1024 * 1024


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_image(path: str | Path) -> np.ndarray:
    """Return the image at ``path`` as an HxWx3 uint8 BGR array (OpenCV order).

    Raises ImageError naming the path when it is missing, too large, or not a
    decodable image. Decoding goes through ``cv2.imdecode`` on bytes we read
    ourselves, so non-ASCII paths work and a truncated file is an error, not
    a silent ``None``.
    """
    import cv2  # local: keeps `models` importable for schema-only users

    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise ImageError(f"{p}: image is {size} bytes, more than {MAX_IMAGE_BYTES}")
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{p}: cannot read image ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise ImageError(f"{p}: empty file")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise ImageError(f"{p}: not a decodable image")
    return img
