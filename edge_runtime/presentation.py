"""One decision per presentation: from something appearing to the counter being empty again.

A *presentation* starts when the scene model (presence.py) says something is
on the counter and ends when it says the counter is empty. Within it:

* Only **sharp, steady** frames are looked at: the caller marks a frame
  steady when the foreground box moved less than ``stable_shift`` of its size
  since the previous frame and the view still looks like the previous one
  (thumbnail correlation at least ``steady_corr``): a product sliding in is
  skipped, with the motion blur it brings, and so is a view that changes
  fast. The view's sharpness must be at least ``sharp_ratio`` of the sharpest
  view of this presentation (or phase, below): a defocused first view is
  outvoted later, when a sharper one arrives the blurred ones drop out of the
  aggregate.
* Their embeddings are **aggregated** (the normalised mean is searched). An
  event is published as soon as the aggregate of at least ``min_views``
  frames is *confident*: its best item reaches the threshold and leads the
  next item by at least ``lead``. The lead is measured against the spread of
  the ten best items' scores, ``(s1 - s2) / (s1 - s10)``, not in cosine: one
  encoder's scores all lie within 0.03 of each other where another's spread
  over 0.2, and the same lead means the same certainty for both (bench
  results: 0.2 gave no wrong event on the train-photo clip with either
  encoder). That is the latency/certainty trade: ``min_views`` 1 answers from
  the first steady view (fastest), more views and a larger lead answer later
  and more surely.
* If the counter empties first, the aggregate decides once more with
  ``leave_lead`` (and at least one frame used). Not confident then: the
  product is **unknown** (not in the catalogue, or never seen clearly). An
  unknown presentation publishes no match event; it is counted and logged.
* After a decision nothing is encoded while the product stays steady and
  looks the same. A stretch of ``swap_frames`` moving frames, or a view whose
  thumbnail (``FrameObs.signature``) correlates less than ``swap_corr`` with
  the decided view's, opens a new *phase*: its first
  ``min_views`` steady frames are aggregated on their own, and if they name
  another item with confidence, that is a **swap** (one product replaced by
  another without the counter emptying): a new presentation, a new event. The
  same item again (turned, lowered and raised) changes nothing. Before a
  decision, a phase that disagrees with the aggregate replaces it (the latest
  steady view wins).
* The same item decided again in a presentation that starts less than
  ``cooldown_s`` after the previous one ended (lowered below the camera for a
  moment) is the same showing: no second event.

Pure: time is the frames' own ``t``; encoding and search are callables the
caller passes, so every case runs as a table test without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.decision import is_reserved

# A swap needs the new views to name another item with confidence *and* to put
# the decided item at least SWAP_GAP of the spread of the ten best scores
# behind it: a product turned, or half lowered out of view, often names a
# neighbour but keeps itself close behind.
SWAP_GAP = 0.5
# How many best items the lead's spread runs over, (s1 - s2) / (s1 - s10):
# every search the tracker decides on must return at least this many.
LEAD_ITEMS = 10

__all__ = ["LEAD_ITEMS", "PresentationParams", "FrameObs", "Outcome", "PresentationTracker", "box_shift",
           "signature"]


@dataclass(frozen=True)
class PresentationParams:
    threshold: float = 0.5       # cosine the best item must reach (the bundle's, normally)
    lead: float = 0.2            # early decision: (s1 - s2) / (s1 - s10) of the aggregate
    min_views: int = 3           # steady views aggregated before an early decision
    leave_lead: float = 0.2      # the decision when the counter empties first
    max_views: int = 30          # steady views encoded without a decision before waiting for motion
    stable_shift: float = 0.05   # box movement between frames (fraction of its size) that is steady
    steady_corr: float = 0.8     # ... and the least thumbnail correlation with the previous frame
    sharp_ratio: float = 0.5     # views less sharp than this x the sharpest are not used
    swap_frames: int = 6         # moving frames that open a new phase (a possible swap)
    swap_corr: float = 0.6       # ... or a decided view's thumbnail correlating less than this
    cooldown_s: float = 0.5      # the same item again this soon after: the same showing

    def __post_init__(self) -> None:
        if self.min_views < 1 or self.max_views < self.min_views:
            raise ValueError("need 1 <= min_views <= max_views")


@dataclass(frozen=True)
class FrameObs:
    """What the tracker needs to know about one frame."""

    index: int
    t: float
    present: bool
    stable: bool = False
    sharpness: float = 0.0
    source_ts: float = 0.0
    captured: float = 0.0
    view: Any = None             # the crop (kept for a snapshot when given)
    signature: Any = None        # a small normalised thumbnail of the crop (see signature())


@dataclass(frozen=True)
class Outcome:
    """The decision for a presentation (or a swap within one)."""

    kind: str                    # "match" or "unknown"
    item_id: str | None
    matches: tuple[Any, ...]     # the aggregate's ranked matches
    presentation: int            # running number
    first_frame: int
    last_frame: int              # the presentation's last frame so far
    frames_used: int
    evidence: FrameObs           # the last frame whose view was used
    reason: str                  # "confident", "left" or "swap"
    held_s: float                # from the first frame to the decision
    view: Any = None             # the sharpest view used (when views are kept)


@dataclass
class _Used:
    emb: np.ndarray
    obs: FrameObs


@dataclass
class _Presentation:
    number: int
    first: FrameObs
    last: FrameObs
    used: list[_Used] = field(default_factory=list)
    phase: list[_Used] | None = None   # frames of the phase after a motion stretch
    moving: int = 0
    max_sharp: float = 0.0
    phase_sharp: float = 0.0           # the sharpest view of the phase
    decided: str | None = None
    matches: tuple[Any, ...] = ()
    signature: Any = None              # the decided view's thumbnail


Search = Callable[[np.ndarray], Sequence[Any]]


class PresentationTracker:
    """Frames in (``update``), decisions out (see the module docstring)."""

    def __init__(self, params: PresentationParams, search: Search) -> None:
        self.p = params
        self.search = search
        self.cur: _Presentation | None = None
        self.count = 0
        self.unknown = 0
        self._last_item: str | None = None
        self._last_end = -1e18

    @property
    def state(self) -> str:
        """A short description for the preview."""
        c = self.cur
        if c is None:
            return "empty"
        if c.decided:
            return f"#{c.number} {c.decided}" + (" (checking)" if c.phase is not None else "")
        return f"#{c.number} looking ({len(c.used)} views)"

    def reset(self) -> None:
        """Forget the presentation in progress (e.g. another encoder from now on)."""
        self.cur = None

    def flush(self) -> list[Outcome]:
        """The stream ended: decide the presentation in progress as if it left."""
        return self._end() if self.cur is not None else []

    def update(self, obs: FrameObs, embed: Callable[[], np.ndarray]) -> list[Outcome]:
        """One frame. ``embed()`` returns the frame's (D,) embedding; it is only
        called for frames that are used."""
        if not obs.present:
            return self._end() if self.cur is not None else []
        if self.cur is None:
            self.count += 1
            self.cur = _Presentation(self.count, obs, obs)
        c = self.cur
        c.last = obs
        if not obs.stable:
            c.moving += 1
            if c.moving >= self.p.swap_frames and c.used:
                self._open_phase(c)
            return []
        c.moving = 0
        if c.phase is None and c.decided is not None and _differs(obs.signature, c.signature,
                                                                  self.p.swap_corr):
            self._open_phase(c)   # looks different: another product?
        if c.phase is None:
            c.max_sharp = max(c.max_sharp, obs.sharpness)
            if (obs.sharpness < self.p.sharp_ratio * c.max_sharp or c.decided is not None
                    or len(c.used) >= self.p.max_views):
                return []   # blurred, or nothing to learn until something moves or changes
            c.used.append(_Used(_unit(embed()), obs))
            return self._try_decide(c, obs)
        c.phase_sharp = max(c.phase_sharp, obs.sharpness)
        if obs.sharpness < self.p.sharp_ratio * c.phase_sharp:
            return []
        c.phase.append(_Used(_unit(embed()), obs))
        if len(c.phase) < self.p.min_views:
            return []
        return self._close_phase(c, obs)

    @staticmethod
    def _open_phase(c: _Presentation) -> None:
        if c.phase is None:
            c.phase, c.phase_sharp = [], 0.0

    # ------------------------------------------------------------------ decisions
    def _sharp(self, used: list[_Used], max_sharp: float) -> list[_Used]:
        """The views sharp enough next to the sharpest one (blurred ones drop out)."""
        return [u for u in used if u.obs.sharpness >= self.p.sharp_ratio * max_sharp] or used

    def _aggregate(self, used: list[_Used], max_sharp: float) -> tuple[np.ndarray, int]:
        keep = self._sharp(used, max_sharp)
        return _unit(np.mean([u.emb for u in keep], axis=0)), len(keep)

    def _confident(self, matches: Sequence[Any], lead: float) -> str | None:
        """The best item, if it reaches the threshold and leads the next one by
        ``lead`` of the spread of the (up to) ten best scores."""
        if not matches:
            return None
        top = matches[0]
        if is_reserved(top.item_id) or top.score < self.p.threshold:
            return None
        if len(matches) > 1 and lead > 0:
            spread = top.score - matches[min(LEAD_ITEMS, len(matches)) - 1].score
            if spread <= 0 or (top.score - matches[1].score) < lead * spread:
                return None
        return str(top.item_id)

    def _try_decide(self, c: _Presentation, obs: FrameObs) -> list[Outcome]:
        if len(c.used) < self.p.min_views:
            return []
        vec, n = self._aggregate(c.used, c.max_sharp)
        if n < self.p.min_views:
            return []
        matches = tuple(self.search(vec))
        item = self._confident(matches, self.p.lead)
        if item is None:
            return []
        return self._decide(c, item, matches, obs, "confident")

    def _decide(self, c: _Presentation, item: str, matches: tuple[Any, ...], obs: FrameObs,
                reason: str) -> list[Outcome]:
        c.decided, c.matches, c.signature = item, matches, obs.signature
        repeat = (item == self._last_item and c.first.t - self._last_end < self.p.cooldown_s)
        if repeat:
            return []   # lowered for a moment and raised again: the same showing
        return [self._outcome(c, "match", item, matches, obs, reason)]

    def _close_phase(self, c: _Presentation, obs: FrameObs) -> list[Outcome]:
        phase, c.phase = c.phase or [], None
        vec, _ = self._aggregate(phase, c.phase_sharp)
        matches = tuple(self.search(vec))
        item = self._confident(matches, self.p.lead)
        if c.decided is None:
            agg, _ = self._aggregate(c.used, c.max_sharp)
            current = self.search(agg)
            if item is not None and current and current[0].item_id != item:
                c.used, c.max_sharp = phase, c.phase_sharp   # the latest steady view wins
            else:
                c.used.extend(phase)
                c.max_sharp = max(c.max_sharp, c.phase_sharp)
            return self._try_decide(c, obs)
        if item is None or item == c.decided or not _far_behind(matches, c.decided):
            c.signature = obs.signature   # the same product, seen anew (or half out of view)
            return []
        # Swapped for another product without the counter emptying.
        self._last_item, self._last_end = c.decided, obs.t
        self.count += 1
        new = _Presentation(self.count, phase[0].obs, obs, used=list(phase),
                            max_sharp=c.phase_sharp)
        self.cur = new
        return self._decide(new, item, matches, obs, "swap")

    def _end(self) -> list[Outcome]:
        c, self.cur = self.cur, None
        assert c is not None
        out: list[Outcome] = []
        if c.decided is None:
            used = c.used + (c.phase or [])
            item, matches = None, ()
            if used:
                vec, _ = self._aggregate(used, c.max_sharp)
                matches = tuple(self.search(vec))
                item = self._confident(matches, self.p.leave_lead)
            evidence = used[-1].obs if used else c.last
            if item is None:
                self.unknown += 1
                out.append(self._outcome(c, "unknown", None, matches, evidence, "left", used))
            else:
                c.used = used
                out.extend(self._decide(c, item, matches, evidence, "left"))
        if c.decided is not None:
            self._last_item, self._last_end = c.decided, c.last.t
        return out

    def _outcome(self, c: _Presentation, kind: str, item: str | None, matches: tuple[Any, ...],
                 evidence: FrameObs, reason: str, used: list[_Used] | None = None) -> Outcome:
        used = self._sharp(c.used if used is None else used, c.max_sharp)
        views = [u.obs for u in used if u.obs.view is not None]
        best = max(views, key=lambda o: o.sharpness).view if views else None
        return Outcome(kind=kind, item_id=item, matches=matches, presentation=c.number,
                       first_frame=c.first.index, last_frame=c.last.index,
                       frames_used=len(used), evidence=used[-1].obs if used else evidence,
                       reason=reason, held_s=max(0.0, c.last.t - c.first.t), view=best)


def box_shift(prev: tuple[int, int, int, int] | None, box: tuple[int, int, int, int] | None) -> float:
    """How far a box's edges moved since the previous frame, each as a fraction of
    the box's size along it (inf when either is missing)."""
    if prev is None or box is None:
        return float("inf")
    x, y, w, h = box
    a, b, c, d = prev
    return max(max(abs(x - a), abs(x + w - a - c)) / max(w, 1),
               max(abs(y - b), abs(y + h - b - d)) / max(h, 1))


def signature(view: np.ndarray, side: int = 8) -> np.ndarray:
    """A tiny thumbnail of a view, zero mean and unit norm: its dot product with
    another is their correlation (light-independent, cheap)."""
    import cv2

    t = cv2.resize(view, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return _unit(t)


def _far_behind(matches: Sequence[Any], item: str | None) -> bool:
    """``item`` trails the best match by at least SWAP_GAP of the spread of the
    (up to) ten best scores, or is not among them."""
    ranked = list(matches[:LEAD_ITEMS])
    mine = next((m for m in ranked if m.item_id == item), None)
    if mine is None:
        return True
    spread = ranked[0].score - ranked[-1].score
    return spread > 0 and ranked[0].score - mine.score >= SWAP_GAP * spread


def _differs(sig: Any, ref: Any, min_corr: float) -> bool:
    if sig is None or ref is None or sig.shape != ref.shape:
        return False
    return float(np.dot(sig, ref)) < min_corr


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
