"""bench/scoring.replay: the latency/certainty replays the README quotes
decide with the kiosk's own rule, on the same number of ranked items as the
kiosk's presenter asks the index for (the lead's spread runs over them).

The matcher here is a table of fixed scores over eleven items, shaped so that
the lead over the five best looks decisive and over the ten best does not."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_runtime.matcher import Match
from edge_runtime.presentation import LEAD_ITEMS, FrameObs, PresentationParams

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from scoring import Recorded, replay  # noqa: E402

# s1 - s2 = 0.05: against s1 - s5 (0.08) a lead of 0.63, against s1 - s10 (0.7) one of 0.07
SCORES = [0.9, 0.85, 0.84, 0.83, 0.82, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]


class TableMatcher:
    def __init__(self) -> None:
        self.asked: list[int] = []

    def search(self, vecs: np.ndarray, top_k: int = 5) -> list[list[Match]]:
        self.asked.append(top_k)
        ranked = [Match(f"item{i}", f"item{i}", s, i + 1) for i, s in enumerate(SCORES)]
        return [ranked[:top_k] for _ in vecs]


def frames(held: int = 8, empty: int = 10) -> list[Recorded]:
    out, emb = [], np.ones(4, np.float32) / 2.0
    for i in range(held + empty):
        present = i < held
        obs = FrameObs(index=i, t=i / 30.0, present=present, stable=present, sharpness=1.0,
                       signature=np.ones(4, np.float32) / 2.0 if present else None)
        out.append(Recorded(obs, emb if present else None))
    return out


def test_replay_ranks_as_many_items_as_the_kiosk():
    m = TableMatcher()
    params = replace(PresentationParams(), threshold=0.5, lead=0.2, leave_lead=0.2, min_views=3)
    events, _, unknown, _ = replay(m, frames(), params)
    assert m.asked and set(m.asked) == {LEAD_ITEMS}
    # the kiosk's rule on ten items: not confident, so the product is unknown
    assert (events, unknown) == ([], 1)
    # and with no lead asked for, the best item is published
    events, _, unknown, _ = replay(TableMatcher(), frames(), replace(params, lead=0.0, leave_lead=0.0))
    assert [item for _, item in events] == ["item0"] and unknown == 0
