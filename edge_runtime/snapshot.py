"""A thumbnail of what the encoder was shown, for auditing answers (off by default).

Published on ``kiosk/{id}/match/snapshot`` beside each match event, linked by
``event_id``: a JSON object whose ``jpeg_b64`` field holds a JPEG of the
sharpest crop the decision used. Why JSON with base64 on its own topic rather
than raw bytes or a field of the event: the match event stays small for the
consumers that only count products; the thumbnail carries its own metadata
(event id, item, size) so an auditing consumer needs nothing else; and the
kiosk keeps one publishing path for JSON (with its queue and retries). Base64
costs a third more bytes on a payload capped at ``max_bytes`` of JPEG.

The cap is hard: quality is lowered step by step, then the image is halved,
until the JPEG fits; an image that cannot fit is not sent.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from edge_runtime.events import utc_iso

__all__ = ["SNAPSHOT_SCHEMA", "encode_capped_jpeg", "snapshot_payload"]

SNAPSHOT_SCHEMA = "kiosk.snapshot/1"
QUALITIES = (85, 70, 55, 40, 25)
MIN_SIDE = 16


def encode_capped_jpeg(image: np.ndarray, max_bytes: int,
                       max_side: int = 224) -> tuple[bytes, int, int] | None:
    """(JPEG, width, height) of a BGR image, longer side at most ``max_side``, at
    most ``max_bytes`` long; None when even the smallest try does not fit."""
    import cv2

    img = np.ascontiguousarray(image[:, :, :3] if image.ndim == 3 else image)
    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w, 1))
    while True:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = img if scale == 1.0 else cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        for q in QUALITIES:
            ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, q])
            if ok and buf.size <= max_bytes:
                return buf.tobytes(), size[0], size[1]
        if max(size) <= MIN_SIDE:
            return None
        scale /= 2.0


def snapshot_payload(*, event_id: str, kiosk_id: str, camera_id: str, item_id: str,
                     frame_index: int, jpeg: tuple[bytes, int, int]) -> dict[str, Any]:
    """The kiosk.snapshot/1 message (schema in docs/asyncapi.yaml)."""
    data, w, h = jpeg
    return {"schema": SNAPSHOT_SCHEMA, "event_id": event_id, "kiosk_id": kiosk_id,
            "camera_id": camera_id, "ts": utc_iso(), "item_id": item_id,
            "frame_index": int(frame_index), "width": int(w), "height": int(h),
            "bytes": len(data), "jpeg_b64": base64.b64encode(data).decode("ascii")}
