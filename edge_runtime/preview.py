"""An annotated preview video (``--preview out.mp4``): the ROI, the top matches
of every frame, and a banner when an event fires. For setting up a kiosk's
ROI and threshold by eye; written to a temp file and renamed at close."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PreviewWriter"]

log = logging.getLogger(__name__)


class PreviewWriter:
    def __init__(self, path: str | Path, fps: float = 30.0,
                 roi: tuple[int, int, int, int] | None = None) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self.fps = fps
        self.roi = roi
        self._writer: Any = None
        self._banner = 0
        self._banner_text = ""
        self.frames = 0

    def write(self, crop: np.ndarray, frame: Any, matches: Any, decision: Any,
              present: str | None, threshold: float) -> None:
        import cv2

        img = np.ascontiguousarray(frame.image).copy()
        if self._writer is None:
            h, w = img.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                           self.fps, (w, h))
            self._size = (w, h)
        if self.roi is not None:
            x, y, w, h = self.roi
            cv2.rectangle(img, (x, y), (x + w, y + h), (255, 200, 0), 2)
        for i, m in enumerate(list(matches)[:3]):
            colour = (0, 220, 0) if m.score >= threshold else (0, 0, 220)
            cv2.putText(img, f"{m.rank}. {m.item_id} {m.score:.2f}", (8, 20 + 18 * i),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        if decision is not None:
            self._banner, self._banner_text = int(self.fps), f"EVENT {decision.item_id}"
        if self._banner > 0:
            self._banner -= 1
            cv2.putText(img, self._banner_text, (8, img.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX,
                        0.6, (0, 255, 255), 2, cv2.LINE_AA)
        elif present:
            cv2.putText(img, f"present: {present}", (8, img.shape[0] - 12),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 200, 200), 1, cv2.LINE_AA)
        if (img.shape[1], img.shape[0]) != self._size:
            img = cv2.resize(img, self._size)
        self._writer.write(img)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self.tmp, self.path)
            log.info("preview written: %s (%d frames)", self.path, self.frames)
