"""Ground truth, event scoring and decision replays shared by the runtime benchmarks.

Scoring (``score_events``), strict: an event is right when it names the
product held up at its ``frame_index`` (the frame the decision rests on) and
it is the first right event of that showing; a second event for the same
showing, an event naming another product, an event for an object in no
catalogue or outside every showing is wrong. Recall: showings of catalogue
products with a right event. Events outside every showing are counted as
``outside_events`` (a product moving in or out, or the empty counter), and
those more than ``EMPTY_GAP`` frames (0.5 s) from any showing as
``empty_events``: the empty counter itself.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Segment = tuple[int, int, "str | None"]
EMPTY_GAP = 15


def class_items(classes_csv: Path) -> dict[int, str]:
    """Fine class id -> item id (the folder path of its iconic image)."""
    out = {}
    with open(classes_csv, newline="") as f:
        for row in csv.DictReader(f):
            iconic = row["Iconic Image Path (str)"].strip("/").split("/")
            out[int(row["Class ID (int)"])] = "/".join(iconic[1:-1])
    return out


def load_segments(clip_csv: Path, classes_csv: Path) -> list[Segment]:
    """(first, last, item id) per showing; item None: an object in no catalogue
    (bench/make_clip.py's card), where no event is right."""
    with open(clip_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    items = class_items(classes_csv) if rows and "item_id" not in rows[0] else {}
    segs: list[Segment] = []
    for r in rows:
        item = (r["item_id"] or None) if "item_id" in r else items[int(r["class_id"])]
        segs.append((int(r["start_frame"]), int(r["end_frame"]), item))
    return segs


def score_events(events: list[tuple[int, str]], segs: list[Segment],
                 published: list[int] | None = None, fps: float = 30.0) -> dict[str, Any]:
    """Strict precision/recall (module docstring); with ``published`` (the frame
    being processed when each event was sent), the decision latency from the
    start of the showing, median and 90th percentile, in ms."""
    def showing(i: int) -> int | None:
        return next((k for k, s in enumerate(segs) if s[0] <= i <= s[1]), None)

    right, found, outside, empty, lat = 0, set(), 0, 0, []
    for n, (frame, item) in enumerate(events):
        k = showing(frame)
        if k is None:
            outside += 1
            empty += all(frame < a - EMPTY_GAP or frame > b + EMPTY_GAP for a, b, _ in segs)
            continue
        if segs[k][2] == item and k not in found:
            right += 1
            found.add(k)
            if published is not None:
                lat.append((published[n] - segs[k][0]) * 1000.0 / fps)
    known = [k for k, s in enumerate(segs) if s[2] is not None]
    n = len(events)
    out = {"events": n, "right": right, "precision": round(right / n, 3) if n else None,
           "showings": len(known), "found": len(found),
           "recall": round(len(found) / len(known), 3) if known else None,
           "outside_events": outside, "empty_events": empty,
           "unknown_object_events": sum(1 for f, _ in events
                                        if (k := showing(f)) is not None and segs[k][2] is None)}
    if lat:
        out["latency_ms_p50"] = round(float(np.percentile(lat, 50)), 1)
        out["latency_ms_p90"] = round(float(np.percentile(lat, 90)), 1)
    return out


# ---------------------------------------------------------------------- replays
@dataclass
class Recorded:
    """One frame as the presenter saw it, with its views' embedding when steady."""

    obs: Any
    emb: np.ndarray | None


def record(matcher: Any, clip: Path, cfg: Any) -> list[Recorded]:
    """Run the scene model and framing of ``cfg`` over the clip once; embed every
    steady view (the tracker's params decide later which ones it uses)."""
    import cv2

    from edge_runtime.cmd_run import build_presenter
    from edge_runtime.sources import crop_roi

    presenter = build_presenter(cfg)
    roi = (cfg.roi.x, cfg.roi.y, cfg.roi.w, cfg.roi.h) if cfg.roi.enabled else None
    out: list[Recorded] = []
    seen: list[Any] = []

    def capture(obs: Any, embed: Any) -> list:
        seen.append((obs, embed() if obs.stable else None))
        return []

    presenter.tracker.update = capture   # record instead of deciding
    cap = cv2.VideoCapture(str(clip))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    i = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frame = _Stamp(i, i / fps)
        presenter.step(crop_roi(img, roi), frame, matcher)
        obs, emb = seen.pop()
        out.append(Recorded(obs, emb))
        i += 1
    cap.release()
    return out


@dataclass(frozen=True)
class _Stamp:
    index: int
    t: float

    @property
    def source_ts(self) -> float:
        return self.t

    @property
    def captured(self) -> float:
        return self.t


def replay(matcher: Any, frames: list[Recorded], params: Any
           ) -> tuple[list[tuple[int, str]], list[int], int, int]:
    """The tracker with ``params`` over recorded frames: (events as (frame_index,
    item), frame at which each was published, unknown presentations, views encoded).
    Searches return as many items as the kiosk's do (LEAD_ITEMS: the lead's spread)."""
    from edge_runtime.presentation import LEAD_ITEMS, PresentationTracker

    tracker = PresentationTracker(params, lambda v: matcher.search(v[None], top_k=LEAD_ITEMS)[0])
    events, published, used = [], [], [0]
    for r in frames:
        def embed(r: Recorded = r) -> np.ndarray:
            used[0] += 1
            assert r.emb is not None
            return r.emb
        for o in tracker.update(r.obs, embed):
            if o.kind == "match":
                events.append((o.evidence.index, str(o.item_id)))
                published.append(r.obs.index)
    return events, published, tracker.unknown, used[0]
