"""What the frame loop hands to the set-up page (web.py), and nothing more.

The frame loop must never wait for the page. So, per frame, it calls
``LiveHub.offer(frame, info)``, which returns at once unless a viewer is
attached *and* the capped rate (``max_fps``, 5 by default) allows another
frame: then it keeps a reference to the frame and what the kiosk made of it
(presenter.FrameInfo; both are new objects every frame, never written again).
Drawing (preview.draw_scene) and JPEG encoding happen on the web server's
threads, once per kept frame however many viewers there are; with nobody
watching, frames are dropped untouched. Decided events come in through
``event(payload, view)``: the payload as published and the view the decision
used, JPEG-encoded only when the page asks for it. The hub also words what
the camera sees for someone setting the kiosk up (``scene_words``).

Thread-safe: one condition guards the state; the clock is injected so the
rate cap is testable without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["LiveHub", "scene_words", "POLL_GRACE_S"]

POLL_GRACE_S = 3.0   # a page polling /frame.jpg counts as a viewer this long after each poll
DARK_MEAN = 40.0     # mean grey level below which the view is "too dark"
SMALL_AREA = 0.01    # a product box under this fraction of the view is "too small"
BLUR_VAR = 30.0      # Laplacian variance of the crop below which it is "blurred"
FRESH_S = 1.0        # a kept frame older than this is not shown to a new viewer
BANNER_S = 2.0       # an event's banner stays this long on the live view


def scene_words(image: np.ndarray, info: Any) -> list[str]:
    """What the kiosk sees, in words, for the person setting it up: "too dark",
    "no product in view", "product too small", "blurred", or "product in
    view"; ``info`` (presenter.FrameInfo) None means presence is off."""
    import cv2

    from edge_runtime.framing import sharpness

    words = []
    grey = cv2.cvtColor(image[::4, ::4, :3], cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    if float(grey.mean()) < DARK_MEAN:
        words.append("too dark")
    if info is None:
        return words
    st = info.scene
    if st.event == "learning":
        return words + ["learning the empty counter"]
    if not st.present or st.box is None:
        return words + ["no product in view"]
    x, y, w, h = st.box
    if w * h < SMALL_AREA * image.shape[0] * image.shape[1]:
        words.append("product too small")
    ox, oy = info.offset
    crop = image[oy + y:oy + y + h, ox + x:ox + x + w]
    if crop.size and sharpness(crop) < BLUR_VAR:
        words.append("blurred")
    return words or ["product in view"]


class LiveHub:
    """The hand-over point between the frame loop and the page (see module docstring)."""

    def __init__(self, *, max_fps: float = 5.0, keep_events: int = 20,
                 roi: tuple[int, int, int, int] | None = None, snapshot_side: int = 224,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / max_fps
        self.roi = roi
        self.snapshot_side = snapshot_side
        self.clock = clock
        self._cond = threading.Condition()      # guards the state below; held briefly
        self._encode_lock = threading.Lock()    # one drawing/encoding at a time (page side)
        self._viewers = 0
        self._poll_until = float("-inf")
        self._last_take = float("-inf")
        self._latest: tuple[Any, Any, str] | None = None   # frame, info, banner
        self._seq = 0
        self._jpeg: tuple[int, bytes] | None = None        # (seq, JPEG) of the last drawn frame
        self._words: list[str] = []
        self._banner = ("", float("-inf"))                 # text, shown until
        self._events: OrderedDict[str, tuple[dict[str, Any], Any]] = OrderedDict()
        self._keep = keep_events
        self._snaps: dict[str, bytes | None] = {}
        self.taken = 0      # frames kept for the page
        self.closed = False

    # ------------------------------------------------------------ frame-loop side
    @property
    def watched(self) -> bool:
        return self._viewers > 0 or self.clock() < self._poll_until

    def offer(self, frame: Any, info: Any = None) -> bool:
        """Every frame: keep it for the page when someone watches and the rate
        cap allows (True), else drop it (False). Never blocks on the page."""
        now = self.clock()
        if info is not None and info.outcomes:
            from edge_runtime.preview import outcome_text

            self._banner = (outcome_text(info.outcomes[-1]), now + BANNER_S)
        if not self.watched or now - self._last_take < self.interval:
            return False
        banner = self._banner[0] if now < self._banner[1] else ""
        with self._cond:
            self._last_take = now
            self._latest = (frame, info, banner)
            self._seq += 1
            self.taken += 1
            self._cond.notify_all()
        return True

    def event(self, payload: dict[str, Any], view: Any = None) -> None:
        """A published event, and the view (BGR array) its decision used, if kept."""
        eid = str(payload.get("event_id"))
        with self._cond:
            self._events[eid] = (payload, view)
            while len(self._events) > self._keep:
                old, _ = self._events.popitem(last=False)
                self._snaps.pop(old, None)

    # ------------------------------------------------------------ page side
    @property
    def viewers(self) -> int:
        return self._viewers

    @contextmanager
    def watching(self) -> Iterator[None]:
        """A live-view connection is open for the duration."""
        with self._cond:
            self._viewers += 1
        try:
            yield
        finally:
            with self._cond:
                self._viewers -= 1

    def poll(self) -> None:
        """A page that polls single frames counts as a viewer for a while."""
        self._poll_until = self.clock() + POLL_GRACE_S

    def fresh_after(self) -> int:
        """The sequence number a new viewer waits after: just before the latest
        kept frame when it is fresh, else the latest (what was kept for an
        earlier viewer is not shown as live)."""
        with self._cond:
            fresh = self._latest is not None and self.clock() - self._last_take < FRESH_S
            return self._seq - 1 if fresh else self._seq

    def wait_frame(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The next kept frame after sequence number ``after``, drawn and
        JPEG-encoded (once, whoever asks), or None after ``timeout`` or at close."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._seq <= after and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            if self.closed:
                return None
        return self.latest_jpeg()

    def latest_jpeg(self) -> tuple[int, bytes] | None:
        """(sequence number, JPEG) of the latest kept frame, drawn and encoded
        once, outside the lock the frame loop takes; None before the first."""
        import cv2

        from edge_runtime.preview import draw_scene

        with self._encode_lock:
            with self._cond:
                latest, seq, cached = self._latest, self._seq, self._jpeg
            if latest is None:
                return None
            if cached is not None and cached[0] == seq:
                return cached
            frame, info, banner = latest
            image = np.ascontiguousarray(frame.image)
            words = scene_words(image, info)
            img = draw_scene(image.copy(), info, self.roi, banner)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 75])
            with self._cond:
                self._jpeg = (seq, buf.tobytes() if ok else b"")
                self._words = words
                return self._jpeg

    def words(self) -> list[str]:
        """What the camera saw in the last drawn frame, in words ([] before any)."""
        with self._cond:
            return list(self._words)

    def events(self) -> list[dict[str, Any]]:
        """The kept events, newest first: ``{"event": payload, "snapshot": bool}``."""
        with self._cond:
            return [{"event": p, "snapshot": v is not None}
                    for p, v in reversed(self._events.values())]

    def event_payload(self, event_id: str) -> dict[str, Any] | None:
        with self._cond:
            got = self._events.get(event_id)
            return None if got is None else got[0]

    def snapshot_jpeg(self, event_id: str) -> bytes | None:
        """The JPEG of the view an event's decision used (encoded at the first ask)."""
        import cv2

        with self._cond:
            got = self._events.get(event_id)
            if got is None or got[1] is None:
                return None
            if event_id in self._snaps:
                return self._snaps[event_id]
        view = np.ascontiguousarray(got[1])
        h, w = view.shape[:2]
        scale = min(1.0, self.snapshot_side / max(h, w, 1))
        if scale < 1.0:
            view = cv2.resize(view, (max(1, round(w * scale)), max(1, round(h * scale))),
                              interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, 85])
        data = buf.tobytes() if ok else None
        with self._cond:
            if event_id in self._events:
                self._snaps[event_id] = data
        return data

    def close(self) -> None:
        """Wake and end every live-view connection."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
