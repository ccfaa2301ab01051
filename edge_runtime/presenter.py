"""The per-frame path of the default runtime: scene model -> framing -> encoder -> decision.

For every frame (inside the optional ``[roi]``, the counter area):

1. the scene model (presence.py) says whether something is on the counter
   and where; an empty counter costs about a millisecond and nothing else;
2. when something is there, the crops around its box (framing.py) are cut;
   the view is *steady* when the box moved less than ``stable_shift`` (and
   less than twice that over the last ``STEADY_SPAN`` frames) and a
   tiny thumbnail of the view correlates at least ``steady_corr`` with the
   previous frame's (it is not sliding, turning or being swapped); steady
   views get their sharpness measured;
3. the presentation tracker (presentation.py) decides whether it needs this
   view; only then are the crops encoded (their embeddings averaged) and the
   aggregate searched.

The encoder, its preprocessing and the index come from the matcher, which the
pipeline may swap between frames (remote updates): nothing here depends on
the encoder. ``FrameInfo`` carries what the preview draws.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edge_runtime.framing import Box, crop_views, sharpness, square_box
from edge_runtime.presence import SceneModel, SceneState
from edge_runtime.presentation import (
    LEAD_ITEMS,
    FrameObs,
    Outcome,
    PresentationParams,
    PresentationTracker,
    box_shift,
    signature,
)

__all__ = ["Presenter", "FrameInfo", "STEADY_SPAN"]

STEADY_SPAN = 3   # frames over which a steady box may move at most twice stable_shift


@dataclass
class FrameInfo:
    """What happened to one frame, for the preview (boxes in frame coordinates)."""

    scene: SceneState
    offset: tuple[int, int]              # the ROI's top-left corner in the frame
    crop_box: Box | None = None          # the first (outer) crop, when cut
    stable: bool = False
    encoded: bool = False
    state: str = "empty"
    matches: tuple[Any, ...] = ()        # the last aggregate's ranked matches
    outcomes: list[Outcome] = field(default_factory=list)


class Presenter:
    """Scene model + framing + presentation tracker for one camera."""

    def __init__(self, scene: SceneModel, params: PresentationParams, margins: tuple[float, ...],
                 top_k: int = 5, keep_views: bool = False) -> None:
        if not margins:
            raise ValueError("at least one crop margin")
        self.scene = scene
        self.margins = tuple(margins)
        self.top_k = top_k
        self.keep_views = keep_views
        self._matcher: Any = None
        self._last: tuple[Any, ...] = ()
        self.tracker = PresentationTracker(params, self._search)
        self._boxes: deque[Box] = deque(maxlen=STEADY_SPAN + 1)   # the last boxes, oldest first
        self._prev_sig: np.ndarray | None = None
        self.encoded_frames = 0

    def rebind(self, threshold: float) -> None:
        """Another bundle from the next frame on: its threshold, a fresh presentation
        (embeddings of two encoders are not comparable)."""
        self.tracker.p = replace(self.tracker.p, threshold=float(threshold))
        self.tracker.reset()

    def relearn(self) -> None:
        """Forget the empty counter (the next frames learn it again) and any
        presentation in progress (asked for by the person setting the kiosk up)."""
        self.scene.reset()
        self.tracker.reset()
        self._boxes.clear()
        self._prev_sig = None
        self._last = ()

    def _search(self, vec: np.ndarray) -> list[Any]:
        """Ranked items for an aggregate: at least ten, for the tracker's lead
        (events list ``top_k`` of them)."""
        self._last = tuple(self._matcher.search(vec[None], top_k=max(self.top_k, LEAD_ITEMS))[0])
        return list(self._last)

    def _steady(self, box: Box | None) -> bool:
        """The box moved less than ``stable_shift`` since the last frame, and less
        than twice that over the last ``STEADY_SPAN`` frames: a shake averages
        out, a product sliding in or coming closer does not."""
        if box is None or not self._boxes:
            return False
        limit = self.tracker.p.stable_shift
        return (box_shift(self._boxes[-1], box) <= limit
                and box_shift(self._boxes[0], box) <= 2 * limit)

    def _signature(self, st: SceneState, shape: tuple[int, ...]) -> np.ndarray:
        """The thumbnail of the innermost view, cut from the scene model's small,
        light-compensated frame (cheaper than from the full image, and steady
        under flicker)."""
        assert st.box is not None and st.small is not None
        h, w = shape[:2]
        x, y, side, _ = square_box(st.box, (w, h), self.margins[-1])
        s = st.scale
        x0, y0 = int(x / s), int(y / s)
        x1, y1 = max(x0 + 2, int(round((x + side) / s))), max(y0 + 2, int(round((y + side) / s)))
        return signature(st.small[y0:y1, x0:x1])

    def step(self, image: np.ndarray, frame: Any, matcher: Any,
             offset: tuple[int, int] = (0, 0)) -> FrameInfo:
        """One frame (``image``: the frame inside the ROI; ``frame``: its stamps)."""
        self._matcher = matcher
        st = self.scene.update(image, frame.t)
        info = FrameInfo(scene=st, offset=offset)
        views: list[np.ndarray] = []
        sharp, sig, corr = 0.0, None, -1.0
        if st.present and st.box is not None:
            views = crop_views(image, st.box, self.margins)
            sig = self._signature(st, image.shape)
            if self._prev_sig is not None:
                corr = float(np.dot(sig, self._prev_sig))
        p = self.tracker.p
        stable = self._steady(st.box) and corr >= p.steady_corr
        if st.present and st.box is not None:
            self._boxes.append(st.box)
            self._prev_sig = sig
        else:
            self._boxes.clear()
            self._prev_sig = None
        if stable:
            sharp = sharpness(views[0])
            h, w = image.shape[:2]
            info.crop_box = square_box(st.box, (w, h), self.margins[0])
        obs = FrameObs(index=frame.index, t=frame.t, present=st.present, stable=stable,
                       sharpness=sharp, source_ts=frame.source_ts, captured=frame.captured,
                       view=views[0] if (self.keep_views and stable) else None, signature=sig)

        def embed() -> np.ndarray:
            info.encoded = True
            self.encoded_frames += 1
            return np.asarray(matcher.encode(views), dtype=np.float32).mean(axis=0)

        info.outcomes = self.tracker.update(obs, embed)
        info.stable = stable
        info.state = self.tracker.state
        info.matches = self._last if st.present or info.outcomes else ()
        if not st.present:
            self._last = ()
        return info
