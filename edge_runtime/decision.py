"""From per-frame search results to match events (pure; time is an argument).

A frame *votes* for an item when its top-1 score reaches the threshold and
beats the best other item by ``margin`` (an unclear view, where two items are
close, votes for nothing; so does an empty counter, whose best score stays
below the threshold or whose best match is a reserved ``_`` item such as
``_background``, photos of the empty counter indexed like a product). An item is *confirmed* when it holds at least
``min_frames`` of the last ``window`` votes and the current frame votes for
it (tolerates a few shaky frames, never fires on a single lucky one).

Confirmation of an item that is not already present gives one event. While it
stays in view nothing more is sent; it is gone once it holds no vote in the
window. Per-item cooldown: an item seen within ``cooldown_s`` before it is
confirmed again (e.g. lowered and raised again, or briefly hidden) gives no
new event. A different item being confirmed is a new event at once.

``t`` is the decision clock the caller passes (file time for files, monotonic
time for cameras): nothing here reads a clock or sleeps, so every case is a
table test. ``EmbeddingWindow`` averages the last k normalised embeddings
before the search (less frame noise; see bench/runtime.py for its effect).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DecisionParams", "Decision", "Decider", "frame_vote", "is_reserved", "EmbeddingWindow",
           "RESERVED_PREFIX"]

RESERVED_PREFIX = "_"


@dataclass(frozen=True)
class DecisionParams:
    threshold: float = 0.5
    margin: float = 0.02
    window: int = 8
    min_frames: int = 5
    cooldown_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_frames <= self.window:
            raise ValueError("need 1 <= min_frames <= window")


@dataclass(frozen=True)
class Decision:
    """One confirmed item: the event to publish."""

    item_id: str
    matches: tuple[Any, ...]   # the triggering frame's ranked matches (Match-like)
    votes: int                 # frames in the window that voted for it
    held_s: float              # time since its first vote in the current run
    t: float


def is_reserved(item_id: str) -> bool:
    """Items whose id starts with '_' (e.g. ``_background``: photos of the empty
    counter) are indexed like products but mean "no product"."""
    return item_id.startswith(RESERVED_PREFIX)


def frame_vote(matches: Sequence[Any], threshold: float, margin: float) -> str | None:
    """The item a frame votes for, or None (nothing above threshold, ambiguous,
    or a reserved "no product" item on top)."""
    if not matches:
        return None
    top = matches[0]
    if top.score < threshold or is_reserved(top.item_id):
        return None
    other = next((m for m in matches[1:] if m.item_id != top.item_id), None)
    if other is not None and top.score - other.score < margin:
        return None
    return top.item_id


class Decider:
    """Temporal smoothing of frame votes into events (see module docstring)."""

    def __init__(self, params: DecisionParams) -> None:
        self.params = params
        self.reset()

    def reset(self) -> None:
        self._votes: deque[str | None] = deque(maxlen=self.params.window)
        self._counts: Counter[str] = Counter()
        self._since: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}
        self.present: str | None = None

    def update(self, matches: Sequence[Any], t: float,
               threshold: float | None = None) -> Decision | None:
        p = self.params
        vote = frame_vote(matches, p.threshold if threshold is None else threshold, p.margin)
        if len(self._votes) == self._votes.maxlen:
            old = self._votes[0]
            if old is not None:
                self._counts[old] -= 1
                if self._counts[old] <= 0:
                    del self._counts[old]
                    self._since.pop(old, None)
        self._votes.append(vote)
        if vote is not None:
            self._counts[vote] += 1
            self._since.setdefault(vote, t)
        if self.present is not None and self.present not in self._counts:
            self.present = None  # no vote left in the window: it has gone
        if vote is not None and vote == self.present:
            self._last_seen[vote] = t  # still in view: no repeat
            return None
        if vote is None or self._counts[vote] < p.min_frames:
            return None
        last = self._last_seen.get(vote)
        self.present = vote
        self._last_seen[vote] = t
        if last is not None and t - last < p.cooldown_s:
            return None
        return Decision(item_id=vote, matches=tuple(matches), votes=self._counts[vote],
                        held_s=max(0.0, t - self._since.get(vote, t)), t=t)


class EmbeddingWindow:
    """Mean of the last ``k`` L2-normalised embeddings, renormalised (k=1: pass-through)."""

    def __init__(self, k: int) -> None:
        self.k = max(1, int(k))
        self._buf: deque[np.ndarray] = deque(maxlen=self.k)

    def reset(self) -> None:
        self._buf.clear()

    def push(self, emb: np.ndarray) -> np.ndarray:
        """Add one (D,) embedding; return the aggregated (D,) embedding."""
        emb = np.asarray(emb, dtype=np.float32).reshape(-1)
        if self._buf and self._buf[-1].shape != emb.shape:
            self._buf.clear()  # a new encoder (bundle swap) has another dimension
        self._buf.append(emb)
        if self.k == 1:
            return emb
        mean = np.mean(np.stack(self._buf), axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 0 else emb
