"""The presentation decision (edge_runtime/presentation.py) as table tests: a
script of frames (present or not, steady or moving, sharp or blurred, which
product the view shows) in, the events out. Embeddings are unit vectors per
product with noise; search is exact cosine against the products' vectors, as
the bundle's index does. No clock, no model."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.matcher import Match
from edge_runtime.presentation import FrameObs, PresentationParams, PresentationTracker

FPS = 30.0
DIM = 16
ITEMS = ["A", "B", "C", "_background"]
PROTO = {k: np.eye(DIM, dtype=np.float32)[i] for i, k in enumerate(ITEMS)}
P = PresentationParams(threshold=0.5, lead=0.3, min_views=3, leave_lead=0.1, cooldown_s=0.5)


def search(vec: np.ndarray) -> list[Match]:
    scores = sorted(((float(np.dot(vec, p)), k) for k, p in PROTO.items()), reverse=True)
    return [Match(k, k, s, r) for r, (s, k) in enumerate(scores, start=1)]


def view(what: str | None, rng: np.random.Generator) -> np.ndarray:
    """A view's embedding: 'A', 'B', ...; 'A~B' between the two, nearer A
    (unclear); 'A-B' clearly A with B behind (a half-hidden B looking like A);
    'X' an unknown product (near no catalogue item)."""
    if what == "X":
        v = np.zeros(DIM, np.float32)
        v[10:] = 1.0
    elif "~" in what or "-" in what:
        a, b = what.replace("-", "~").split("~")
        v = PROTO[a] + (0.8 if "~" in what else 0.5) * PROTO[b]
    else:
        v = PROTO[what].copy()
    v = v + rng.normal(0, 0.05, DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def script(*parts: tuple) -> list[tuple]:
    """(kind, n[, what]) parts: "empty"; "move" (present, box moving); "hold" what
    (steady, sharp); "blur" what (steady but blurred); "signature" changes with what."""
    out = []
    for part in parts:
        kind, n, what = part[0], part[1], (part[2] if len(part) > 2 else None)
        out += [(kind, what)] * n
    return out


def run(frames: list[tuple], params: PresentationParams = P, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = PresentationTracker(params, search)
    events, unknown, embedded = [], [], []
    for i, (kind, what) in enumerate(frames):
        present = kind != "empty"
        sig = None if what is None else np.asarray(
            PROTO[what.replace("-", "~").split("~")[0] if what != "X" else "C"])
        obs = FrameObs(index=i, t=i / FPS, present=present, stable=kind in ("hold", "blur"),
                       sharpness=10.0 if kind == "blur" else 100.0, signature=sig)

        def embed(what=what, i=i):
            embedded.append(i)
            return view(what, rng)
        for o in t.update(obs, embed):
            (events if o.kind == "match" else unknown).append(o)
    for o in t.flush():
        (events if o.kind == "match" else unknown).append(o)
    return events, unknown, embedded


def items(events) -> list[tuple[str, int, str]]:
    return [(e.item_id, e.evidence.index, e.reason) for e in events]


def test_held_product_gives_one_event_after_min_views_steady_views():
    ev, unk, emb = run(script(("empty", 10), ("move", 8), ("hold", 90, "A"), ("move", 8),
                              ("empty", 10)))
    assert items(ev) == [("A", 20, "confident")] and not unk
    e = ev[0]
    assert (e.first_frame, e.frames_used, e.presentation) == (10, 3, 1)
    assert emb == [18, 19, 20]          # nothing is encoded while it stays as it was
    assert e.matches[0].item_id == "A" and e.matches[0].score > 0.9


def test_empty_counter_and_moving_views_encode_nothing():
    ev, unk, emb = run(script(("empty", 100), ("move", 30, "A"), ("empty", 20)))
    assert ev == [] and emb == []
    assert len(unk) == 1 and unk[0].frames_used == 0    # something passed, never seen steadily


@pytest.mark.parametrize("frames, expected", [
    # swapped for another product, moved in and out without the counter emptying
    (script(("move", 5), ("hold", 40, "A"), ("move", 8), ("hold", 40, "B"), ("empty", 5)),
     [("A", 7, "confident"), ("B", 55, "swap")]),
    # swapped in place: the view changes at once (thumbnail), no motion in between
    (script(("move", 5), ("hold", 40, "A"), ("hold", 40, "B"), ("empty", 5)),
     [("A", 7, "confident"), ("B", 47, "swap")]),
    # half lowered out of view: the view names a neighbour, the product close behind
    (script(("move", 5), ("hold", 40, "A"), ("move", 8), ("hold", 20, "B-A"), ("move", 8),
            ("hold", 20, "A"), ("empty", 5)),
     [("A", 7, "confident")]),
    # turned around (moving) and held again: the same product, no second event
    (script(("move", 5), ("hold", 40, "A"), ("move", 10), ("hold", 40, "A"), ("empty", 5)),
     [("A", 7, "confident")]),
    # lowered out of view for a moment (< cooldown_s) and raised again: one showing
    (script(("move", 5), ("hold", 40, "A"), ("empty", 8), ("move", 3), ("hold", 40, "A")),
     [("A", 7, "confident")]),
    # lowered for 2 s and raised again: a second showing (a second unit), a second event
    (script(("move", 5), ("hold", 40, "A"), ("empty", 60), ("move", 3), ("hold", 40, "A")),
     [("A", 7, "confident"), ("A", 110, "confident")]),
    # blurred at entry (defocus while steady, a confusable view), then sharp
    (script(("move", 5), ("blur", 2, "B~A"), ("hold", 40, "A"), ("empty", 5)),
     [("A", 9, "confident")]),
    # the empty-counter item of a bundle with `_background` photos: nothing
    (script(("move", 5), ("hold", 40, "_background"), ("empty", 5)), []),
])
def test_decision_table(frames, expected):
    ev, _, _ = run(frames)
    assert items(ev) == expected


def test_unknown_product_publishes_no_event_and_is_counted():
    ev, unk, emb = run(script(("move", 5), ("hold", 60, "X"), ("empty", 5)))
    assert ev == []
    assert len(unk) == 1 and unk[0].item_id is None and unk[0].reason == "left"
    assert unk[0].frames_used == P.max_views and len(emb) == P.max_views   # then it stops encoding


def test_unclear_view_is_decided_when_the_product_leaves():
    """Never clear enough for an early decision (lead 0.3: the view leads by
    about 0.2 of the spread); at leave the aggregate passes leave_lead 0.1: one
    event, resting on the last view used."""
    params = PresentationParams(threshold=0.5, lead=0.3, min_views=3, leave_lead=0.1)
    ev, unk, _ = run(script(("move", 5), ("hold", 20, "A~B"), ("move", 10), ("empty", 5)), params)
    assert items(ev) == [("A", 24, "left")] and not unk
    assert ev[0].last_frame == 34


def test_blurred_views_leave_the_aggregate_when_sharp_ones_arrive():
    ev, _, emb = run(script(("move", 5), ("blur", 3, "B"), ("hold", 3, "A"), ("empty", 5)),
                     PresentationParams(threshold=0.5, lead=0.3, min_views=6))
    assert items(ev) == [("A", 10, "left")]     # not enough sharp views for an early decision
    assert ev[0].frames_used == 3 and emb == [5, 6, 7, 8, 9, 10]   # the blurred ones dropped out


def test_latency_certainty_trade():
    """min_views 1 answers from the first steady view; more views answer later."""
    frames = script(("move", 5), ("hold", 40, "A"), ("empty", 5))
    fast, _, _ = run(frames, PresentationParams(threshold=0.5, lead=0.3, min_views=1))
    slow, _, _ = run(frames, PresentationParams(threshold=0.5, lead=0.3, min_views=8))
    assert items(fast) == [("A", 5, "confident")] and items(slow) == [("A", 12, "confident")]


def test_bad_params_are_refused():
    with pytest.raises(ValueError):
        PresentationParams(min_views=5, max_views=3)
