"""Decision logic as table tests: a scripted sequence of per-frame top-2
results at 30 fps in, the events out. No clock, no sleeping."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.decision import Decider, DecisionParams, EmbeddingWindow, frame_vote
from edge_runtime.matcher import Match

FPS = 30.0
P = DecisionParams(threshold=0.8, margin=0.05, window=8, min_frames=5, cooldown_s=1.0)


def frame(item: str | None, score: float = 0.95, second: float = 0.5) -> list[Match]:
    """A frame's ranked matches: ``item`` on top (None = empty counter)."""
    if item is None:
        return [Match("A", "A", 0.3, 1), Match("B", "B", 0.2, 2)]
    other = "B" if item != "B" else "A"
    return [Match(item, item, score, 1), Match(other, other, second, 2)]


def script(*parts: tuple) -> list[list[Match]]:
    """("A", 90) = 90 frames of A held clearly; (None, 30) = empty counter;
    ("A", n, score, second) for custom scores; ("AB", n) alternates A and B."""
    out: list[list[Match]] = []
    for part in parts:
        what, n = part[0], part[1]
        for i in range(n):
            if what == "AB":
                out.append(frame("A" if i % 2 == 0 else "B"))
            else:
                out.append(frame(what, *part[2:]))
    return out


def events(frames: list[list[Match]], params: DecisionParams = P) -> list[tuple[str, int]]:
    d = Decider(params)
    out = []
    for i, matches in enumerate(frames):
        ev = d.update(matches, i / FPS)
        if ev is not None:
            out.append((ev.item_id, i))
    return out


@pytest.mark.parametrize("frames, expected", [
    # a product held ~3 s gives one event, after min_frames consistent frames
    (script((None, 30), ("A", 90), (None, 30)), [("A", 34)]),
    # it stays for a minute: still one event
    (script(("A", 1800)), [("A", 4)]),
    # a change of product gives a new event
    (script(("A", 60), ("B", 60)), [("A", 4), ("B", 64)]),
    # empty counter: nothing
    (script((None, 300)), []),
    # shaky view alternating two products every frame: nothing
    (script(("AB", 120)), []),
    # ambiguous view (top-2 within the margin): nothing
    (script(("A", 120, 0.95, 0.93)), []),
    # below the threshold: nothing
    (script(("A", 120, 0.79, 0.2)), []),
    # a glimpse shorter than min_frames: nothing
    (script((None, 10), ("A", 4), (None, 30)), []),
    # same product shown again after it was away for 2 s (> cooldown): a new event
    (script(("A", 60), (None, 60), ("A", 60)), [("A", 4), ("A", 124)]),
    # lowered for a moment (0.5 s < cooldown) and raised again: no repeat
    (script(("A", 60), (None, 15), ("A", 60)), [("A", 4)]),
    # A -> B -> back to A after more than the cooldown: three events
    (script(("A", 60), ("B", 60), ("A", 60)), [("A", 4), ("B", 64), ("A", 124)]),
    # one shaky frame in a hold does not restart or repeat anything
    (script(("A", 30), ("B", 1), ("A", 30)), [("A", 4)]),
    # the empty counter matched to the reserved "_background" item: nothing
    (script(("_background", 120)), []),
    # a product after the reserved item: its event as usual
    (script(("_background", 30), ("A", 60)), [("A", 34)]),
])
def test_decision_table(frames, expected):
    assert events(frames) == expected


def test_event_carries_votes_and_hold_time():
    d = Decider(P)
    out = [d.update(m, i / FPS) for i, m in enumerate(script((None, 3), ("A", 10)))]
    ev = next(e for e in out if e is not None)
    assert ev.votes == P.min_frames
    assert ev.held_s == pytest.approx(4 / FPS)
    assert ev.matches[0].item_id == "A"


def test_threshold_passed_per_call_overrides_params():
    d = Decider(P)
    got = [d.update(frame("A", 0.7, 0.1), i / FPS, threshold=0.6) for i in range(10)]
    assert sum(e is not None for e in got) == 1


@pytest.mark.parametrize("matches, expected", [
    ([], None),
    ([Match("A", "A", 0.9, 1)], "A"),
    ([Match("A", "A", 0.9, 1), Match("B", "B", 0.87, 2)], None),
    ([Match("A", "A", 0.9, 1), Match("B", "B", 0.8, 2)], "A"),
    ([Match("A", "A", 0.7, 1)], None),
    ([Match("_background", "_background", 0.99, 1), Match("A", "A", 0.5, 2)], None),
])
def test_frame_vote(matches, expected):
    assert frame_vote(matches, 0.8, 0.05) == expected


def test_params_validate():
    with pytest.raises(ValueError):
        DecisionParams(window=3, min_frames=4)


def test_embedding_window_means_and_renormalises():
    w = EmbeddingWindow(2)
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    assert np.allclose(w.push(a), a)
    assert np.allclose(w.push(b), [2 ** -0.5, 2 ** -0.5])
    assert np.allclose(w.push(b), b)
    assert np.allclose(w.push(np.ones(3, np.float32) / 3 ** 0.5), np.ones(3) / 3 ** 0.5)  # new dim
    assert np.allclose(EmbeddingWindow(1).push(a), a)


def test_event_matches_leave_out_reserved_items():
    from edge_runtime.events import matches_json

    ms = [Match("A", "A", 0.9, 1), Match("_background", "bg", 0.8, 2), Match("B", "B", 0.7, 3)]
    assert [(m["item_id"], m["rank"]) for m in matches_json(ms)] == [("A", 1), ("B", 2)]
    assert len(matches_json(ms, top_k=1)) == 1
