"""Snapshots: the JPEG size cap, and thumbnails beside real events on a real broker."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
from support import Collector
from test_runtime_pipeline import kiosk_config, unique_events

from edge_runtime.cmd_run import Kiosk
from edge_runtime.snapshot import encode_capped_jpeg


@pytest.mark.parametrize("max_bytes, max_side", [(20000, 224), (3000, 224), (1500, 96)])
def test_jpeg_is_capped_in_bytes_and_side(max_bytes, max_side):
    import cv2

    noise = np.random.default_rng(0).integers(0, 255, (600, 500, 3)).astype(np.uint8)  # incompressible
    data, w, h = encode_capped_jpeg(noise, max_bytes, max_side)
    assert len(data) <= max_bytes and max(w, h) <= max_side
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (h, w) and abs(w / h - 500 / 600) < 0.05


def test_impossible_cap_sends_nothing():
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    assert encode_capped_jpeg(noise, 100) is None


def test_snapshots_follow_events_when_enabled(broker, shop_clip, pixel_bundle, validate_message):
    col = Collector(broker.port, ["kiosk/snap/#"])
    try:
        cfg = kiosk_config(broker.port, shop_clip, pixel_bundle, "snap",
                           snapshot={"enabled": True, "max_bytes": 2500, "max_side": 64})
        assert Kiosk(cfg).run(threading.Event()) == "ended"
        assert col.wait_for(lambda m: m[0].endswith("/status") and not json.loads(m[1])["online"])
    finally:
        col.close()
    import cv2

    msgs = [(t, json.loads(p)) for t, p, _ in col.messages]
    events = unique_events([p for t, p in msgs if t == "kiosk/snap/match"])
    snaps = {p["event_id"]: p for t, p in msgs if t == "kiosk/snap/match/snapshot"}
    assert events and set(snaps) == {e["event_id"] for e in events}
    for e in events:
        s = snaps[e["event_id"]]
        validate_message("kiosk/snap/match/snapshot", s)
        data = base64.b64decode(s["jpeg_b64"])
        assert len(data) == s["bytes"] <= 2500 and s["item_id"] == e["item_id"]
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[:2] == (s["height"], s["width"]) and max(img.shape[:2]) <= 64
