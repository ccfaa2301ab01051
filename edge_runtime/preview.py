"""An annotated preview video (``--preview out.mp4``), written to a temp file
and renamed at close. With the scene model (the default, ``write_scene``): the
outline of the foreground mask, the crop the encoder sees (green when the
view is used, grey when it is skipped as moving or blurred), the presentation
state, the current best matches and a banner when an event (or an unknown)
is decided. Without it (``write``): the ROI, every frame's top matches, events."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PreviewWriter", "draw_scene", "outcome_text"]

log = logging.getLogger(__name__)


def outcome_text(o: Any) -> str:
    """The banner for a decided presentation (presentation.Outcome)."""
    if o.kind == "match":
        return f"EVENT {o.item_id} ({o.reason}, {o.frames_used} views)"
    return f"UNKNOWN ({o.frames_used} views)"


def draw_scene(img: np.ndarray, info: Any, roi: tuple[int, int, int, int] | None,
               banner: str = "") -> np.ndarray:
    """Draw on ``img`` (a BGR frame, in place) what the kiosk made of it: the
    optional outer region, the outline of the foreground, the crop the
    encoder sees (green when used, grey when skipped), the presentation state,
    the best matches and ``banner``. ``info`` (presenter.FrameInfo) may be
    None (presence off): the region only. The preview video and the live view
    of the page (web_hub.py) both draw with this."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    if roi is not None:
        x, y, w, h = roi
        cv2.rectangle(img, (x, y), (x + w, y + h), (255, 200, 0), 1)
    if info is not None:
        ox, oy = info.offset
        st = info.scene
        if st.mask is not None and st.mask.any():
            contours, _ = cv2.findContours(st.mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            scaled = [np.round(c * st.scale).astype(np.int32) + (ox, oy) for c in contours]
            cv2.drawContours(img, scaled, -1, (255, 0, 255), 2)
        if info.crop_box is not None:
            x, y, w, h = info.crop_box
            colour = (0, 220, 0) if info.encoded else (160, 160, 160)
            cv2.rectangle(img, (x + ox, y + oy), (x + ox + w, y + oy + h), colour, 2)
        state = info.state + (f" [{st.event}]" if st.event else "")
        cv2.putText(img, state, (8, 20), font, 0.5, (0, 255, 255), 1, cv2.LINE_AA)
        for i, m in enumerate(list(info.matches)[:3]):
            cv2.putText(img, f"{m.rank}. {m.item_id} {m.score:.2f}", (8, 40 + 18 * i), font, 0.45,
                        (230, 230, 230), 1, cv2.LINE_AA)
    if banner:
        # Shrink the banner to the frame's width (a 320 px frame cuts off a long item id).
        (w, _), _ = cv2.getTextSize(banner, font, 0.6, 2)
        scale = max(0.3, min(0.6, 0.6 * (img.shape[1] - 16) / max(w, 1)))
        cv2.putText(img, banner, (8, img.shape[0] - 12), font, scale, (0, 255, 255), 1 if scale < 0.45 else 2,
                    cv2.LINE_AA)
    return img


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

    def _open(self, img: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            h, w = img.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                           self.fps, (w, h))
            self._size = (w, h)

    def _emit(self, img: np.ndarray) -> None:
        import cv2

        if (img.shape[1], img.shape[0]) != self._size:
            img = cv2.resize(img, self._size)
        self._writer.write(img)
        self.frames += 1

    def write_scene(self, frame: Any, info: Any) -> None:
        """One frame of the default runtime (``info``: presenter.FrameInfo)."""
        img = np.ascontiguousarray(frame.image).copy()
        self._open(img)
        for o in info.outcomes:
            self._banner, self._banner_text = int(self.fps), outcome_text(o)
        banner = ""
        if self._banner > 0:
            self._banner -= 1
            banner = self._banner_text
        draw_scene(img, info, self.roi, banner)
        self._emit(img)

    def write(self, crop: np.ndarray, frame: Any, matches: Any, decision: Any,
              present: str | None, threshold: float) -> None:
        import cv2

        img = np.ascontiguousarray(frame.image).copy()
        self._open(img)
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
        self._emit(img)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self.tmp, self.path)
            log.info("preview written: %s (%d frames)", self.path, self.frames)
