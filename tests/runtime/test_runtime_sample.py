"""The shipped sample (sample/bundle on sample/clip.mp4 with sample/kiosk.toml,
which sets no region: the defaults) end to end against a real broker: the
events match the clip's ground truth.
Skipped until the ship team's sample/ is complete."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest
from support import Collector

from edge_runtime.cmd_run import Kiosk
from edge_runtime.config import apply_overrides, load_config

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample"

pytestmark = [
    pytest.mark.skipif(not (SAMPLE / "bundle" / "manifest.json").is_file()
                       or not (SAMPLE / "clip.csv").is_file(), reason="sample/ is not complete"),
]


def test_sample_clip_events_match_ground_truth(broker, monkeypatch, validate_message):
    monkeypatch.chdir(REPO)   # sample/kiosk.toml uses repo-relative paths
    cfg = apply_overrides(load_config(SAMPLE / "kiosk.toml"), {
        "kiosk.id": "sample-test", "mqtt.host": "127.0.0.1", "mqtt.port": broker.port,
        "mqtt.flush_timeout_s": 10, "backend.kind": "onnxruntime"})
    with open(SAMPLE / "clip.csv", newline="") as f:
        segs = [(int(r["start_frame"]), int(r["end_frame"]), r["item_id"]) for r in csv.DictReader(f)]
    col = Collector(broker.port, ["kiosk/sample-test/match"])
    try:
        assert Kiosk(cfg).run(threading.Event()) == "ended"
        col.wait_for(lambda m: False, timeout=0.5)
    finally:
        col.close()
    events = {}
    for _, payload, _ in col.messages:
        e = json.loads(payload)
        validate_message("kiosk/sample-test/match", e)
        events[e["event_id"]] = e
    # The runtime's part: at most one event per product shown, inside its
    # showing (the view it rests on), none for the empty counter in between.
    hits = sorted((next((k for k, s in enumerate(segs) if s[0] <= e["frame_index"] <= s[1]), None),
                   e["item_id"]) for e in events.values())
    shown = [k for k, _ in hits]
    assert None not in shown and len(set(shown)) == len(shown), hits
    assert all(e["presentation"]["frames_used"] >= 1 for e in events.values())
    # The model's part (the 64 px sample encoder: 8 of 12 right, one unknown,
    # measured with the default framing; it confuses pomegranate/Pink Lady and
    # kiwi/carrots/passion fruit).
    right = sum(segs[k][2] == item for k, item in hits)
    print(f"sample clip: {len(events)} events for {len(segs)} products, {right} name the product")
    assert right >= len(segs) // 2
