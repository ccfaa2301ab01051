"""End to end: a real clip decoded by OpenCV -> ONNX Runtime -> Annoy bundle ->
decision -> a real Mosquitto; what a subscriber receives is checked against
the clip's ground truth and the AsyncAPI schemas."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
from runtime_support import SessionSubscriber
from support import Collector

from edge_runtime.cmd_run import Kiosk
from edge_runtime.config import parse_config
from edge_runtime.matcher import Matcher
from edge_runtime.metrics import MetricsServer, RuntimeStats
from edge_runtime.sources import open_source
from models.errors import ConfigError


def kiosk_config(port: int, clip, bundle, kiosk_id: str, **extra):
    """The test kiosk: defaults, except that the encoder is shown the
    foreground box exactly (the pixel encoder compares pooled pixels, so a
    view must be framed as the catalogue photo is)."""
    data = {"kiosk": {"id": kiosk_id, "camera_id": "cam-test"},
            "crop": {"margins": [0.0]},
            "source": {"uri": str(clip.path)},
            "bundle": {"path": str(bundle)},
            "backend": {"kind": "auto", "threads": 1, "max_batch": 4},
            "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 1,
                     "reconnect_max_s": 1, "flush_timeout_s": 10, "metrics_interval_s": 0.5}}
    for key, value in extra.items():
        data.setdefault(key, {}).update(value)
    return parse_config(data)


def unique_events(messages: list[dict]) -> list[dict]:
    seen, out = set(), []
    for m in messages:
        if m["event_id"] not in seen:
            seen.add(m["event_id"])
            out.append(m)
    return sorted(out, key=lambda m: m["frame_index"])


def check_against_ground_truth(events: list[dict], clip) -> None:
    """One event per product segment, inside it, naming its item; none elsewhere."""
    expected = [s for s in clip.segments if s.item_id is not None]
    assert [e["item_id"] for e in events] == [s.item_id for s in expected], events
    for e, s in zip(events, expected, strict=True):
        assert s.start <= e["frame_index"] <= s.end
        assert e["matches"][0]["item_id"] == e["item_id"]
        assert e["matches"][0]["score"] >= 0.9


def test_events_match_ground_truth(broker, shop_clip, pixel_bundle, validate_message):
    col = Collector(broker.port, ["kiosk/gt/#"])
    try:
        kiosk = Kiosk(kiosk_config(broker.port, shop_clip, pixel_bundle, "gt"))
        assert kiosk.run(threading.Event()) == "ended"
        assert col.wait_for(lambda m: m[0].endswith("/status") and not json.loads(m[1])["online"])
    finally:
        col.close()
    msgs = [(t, json.loads(p)) for t, p, _ in col.messages]
    for topic, payload in msgs:
        validate_message(topic, payload)   # every real message against docs/asyncapi.yaml
    events = unique_events([p for t, p in msgs if t == "kiosk/gt/match"])
    check_against_ground_truth(events, shop_clip)
    assert not [t for t, _ in msgs if t.endswith("/snapshot")]   # snapshots are off by default
    e = events[0]
    p = e["presentation"]
    assert p["first_frame"] <= e["frame_index"] <= p["last_frame"] and p["frames_used"] >= 3
    assert e["kiosk_id"] == "gt" and e["camera_id"] == "cam-test" and e["bundle_version"] >= 1
    assert 0 <= e["latency_ms"] < 5000 and e["source_ts"] == pytest.approx(e["frame_index"] / 30, abs=1e-3)
    assert [e["presentation"]["reason"] for e in events] == [
        "confident", "confident", "confident", "swap", "confident", "confident"]
    final = [p for t, p in msgs if t == "kiosk/gt/status"][-1]
    assert final["online"] is False and final["reason"] == "ended" and final["source_state"] == "ended"
    assert final["backend"] == "onnxruntime"
    metrics = [p for t, p in msgs if t == "kiosk/gt/metrics"]
    assert metrics and metrics[-1]["frames"] == shop_clip.frames and metrics[-1]["dropped_frames"] == 0
    assert metrics[-1]["unknown_presentations"] == 2   # the shaky view and the unknown product


class BrokerOutage:
    """Wraps a real source: stops the broker at frame ``down`` and starts it
    again at frame ``up`` (deterministic, on the pipeline's thread)."""

    def __init__(self, source, broker, down: int, up: int) -> None:
        self.source, self.broker, self.down, self.up = source, broker, down, up
        self.mqtt = None

    def __getattr__(self, name):
        return getattr(self.source, name)

    def read(self, timeout):
        f = self.source.read(timeout)
        if f is not None and f.index == self.down:
            self.broker.stop()
        if f is not None and f.index == self.up:
            self.broker.start()
        return f


def test_broker_restart_mid_clip_loses_no_event(persistent_broker, shop_clip, pixel_bundle):
    b = persistent_broker
    sub = SessionSubscriber(b.port, ["kiosk/outage/match"], "sub-outage")
    cfg = kiosk_config(b.port, shop_clip, pixel_bundle, "outage")
    # down while products 2 and 3 are shown; back before the end of the clip
    source = BrokerOutage(open_source(cfg.source), b, down=80, up=220)
    try:
        kiosk = Kiosk(cfg, source=source)
        assert kiosk.run(threading.Event()) == "ended"
        assert kiosk.mqtt.dropped == 0 and kiosk.mqtt.connects >= 2   # it really was cut off
        expected = sum(s.item_id is not None for s in shop_clip.segments)
        assert sub.wait_until(lambda: len({m["event_id"] for m in sub.json_on("/match")}) >= expected,
                              15)
    finally:
        sub.close()
    check_against_ground_truth(unique_events(sub.json_on("/match")), shop_clip)


def test_swap_matcher_between_frames(shop_clip, pixel_bundle, tiny_bundle):
    from edge_runtime.decision import Decider, DecisionParams
    from edge_runtime.pipeline import Pipeline, PipelineOptions

    class Sink:
        def __init__(self):
            self.sent = []

        def publish_json(self, subtopic, payload, qos=1, retain=False):
            self.sent.append(payload)

    src = open_source(parse_config({"source": {"uri": str(shop_clip.path)}}).source)
    first = Matcher.open(pixel_bundle)
    sink = Sink()
    p = Pipeline(src, first, Decider(DecisionParams(threshold=0.9)), sink,
                 PipelineOptions(kiosk_id="s", camera_id="c"))
    src.start()
    assert p.run(threading.Event(), max_frames=40) == "max_frames"
    second = Matcher.open(tiny_bundle)
    assert p.swap_matcher(second) is first and p.current_matcher is second
    first.close()
    assert p.run(threading.Event(), max_frames=80) == "max_frames"   # 32-d encoder now
    src.stop()
    second.close()
    assert p.frames == 80
    assert sink.sent and sink.sent[0]["item_id"] == shop_clip.segments[0].item_id


def test_preview_video_is_written(tmp_path, broker, shop_clip, pixel_bundle):
    import cv2

    out = tmp_path / "preview.mp4"
    cfg = kiosk_config(broker.port, shop_clip, pixel_bundle, "pv", preview={"path": str(out)},
                       roi={"x": 40, "y": 20, "w": 240, "h": 200})
    cfg = cfg.model_copy(update={"max_frames": 60})
    assert Kiosk(cfg).run(threading.Event()) == "max_frames"
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img.astype(int))
    assert len(frames) == 60

    def near(img, bgr) -> int:
        return int((np.abs(img - np.array(bgr)).max(axis=2) < 60).sum())
    # The first product is held from frame 20: the mask outline (magenta) and
    # the crop the encoder used (green) are drawn; on the empty counter neither.
    assert near(frames[10], (255, 0, 255)) == 0 and near(frames[10], (0, 220, 0)) == 0
    assert near(frames[22], (0, 220, 0)) > 100          # a view used, its crop in green
    assert near(frames[40], (255, 0, 255)) > 100        # the foreground's outline


def test_prometheus_endpoint_on_loopback():
    stats = RuntimeStats()
    for ms in (1.0, 2.0, 3.0):
        stats.frame(ms)
    srv = MetricsServer("127.0.0.1", 0, lambda: stats.snapshot(queue_depth=0), "pk").start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5).read()
    finally:
        srv.stop()
    from prometheus_client.parser import text_string_to_metric_families

    got = {s.name: (s.labels, s.value) for fam in text_string_to_metric_families(body.decode())
           for s in fam.samples}
    assert got["kiosk_frames"] == ({"kiosk_id": "pk"}, 3.0)
    assert got["kiosk_latency_ms_p50"] == ({"kiosk_id": "pk"}, 2.0)
    assert "kiosk_queue_depth" in got


def test_runtime_stats_percentiles():
    stats = RuntimeStats()
    for ms in np.arange(1, 101, dtype=float):
        stats.frame(ms)
    snap = stats.snapshot()
    assert snap["latency_ms_p50"] == pytest.approx(50.5)
    assert snap["latency_ms_p99"] == pytest.approx(99.01)
    assert snap["frames"] == 100


def test_systemd_ready_watchdog_and_stopping(tmp_path, monkeypatch, broker, shop_clip, pixel_bundle):
    """READY=1 at the first frame, WATCHDOG=1 from the frame loop, STOPPING=1
    at shutdown, on a real unix datagram socket (read as systemd would)."""
    import socket

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    got: list[str] = []
    done = threading.Event()

    def listen():   # a datagram queue holds ~10 messages: keep reading, like systemd
        while not done.is_set():
            try:
                got.append(sock.recv(256).decode())
            except (TimeoutError, BlockingIOError):
                continue

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")     # ping every 50 ms at most
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = kiosk_config(broker.port, shop_clip, pixel_bundle, "sd", source={"realtime": True})
    cfg = cfg.model_copy(update={"max_frames": 20})
    try:
        assert Kiosk(cfg).run(threading.Event()) == "max_frames"
    finally:
        time.sleep(0.3)
        done.set()
        reader.join(2)
        sock.close()
    assert got[0].startswith("READY=1")
    assert "WATCHDOG=1" in got and got[-1] == "STOPPING=1"


def test_update_enabled_seeds_a_store_and_runs_from_it(tmp_path, broker, shop_clip, pixel_bundle):
    """[update] enabled: the bundle folder seeds a bundle store, the kiosk runs
    its active release and listens for update commands."""
    from edge_runtime.update.store import is_store
    from models.signing import write_keypair

    _, public, _ = write_keypair(tmp_path / "keys")
    store = tmp_path / "store"
    update = {"enabled": True, "store_dir": str(store), "trusted_keys": [],
              "mirrors": ["http://127.0.0.1:8000/releases/"]}
    cfg = kiosk_config(broker.port, shop_clip, pixel_bundle, "upd", update=update)
    with pytest.raises(ConfigError, match="trusted_keys"):   # refused before anything starts
        Kiosk(cfg).run(threading.Event())
    update["trusted_keys"] = [str(public)]
    cfg = kiosk_config(broker.port, shop_clip, pixel_bundle, "upd", update=update)
    cfg = cfg.model_copy(update={"max_frames": 10})
    kiosk = Kiosk(cfg)
    assert kiosk.run(threading.Event()) == "max_frames"
    assert is_store(store)
    assert kiosk.pipeline.current_matcher.bundle_dir.resolve().is_relative_to(store.resolve())


def test_presence_off_is_the_windowed_vote_over_whole_frames(broker, shop_clip, pixel_bundle):
    """``[presence] mode = "off"``: every frame (inside the ROI) is encoded and
    the windowed vote decides, as before the scene model (for stores that
    index photos of their empty counter as a reserved ``_background`` item)."""
    col = Collector(broker.port, ["kiosk/off/match"])
    try:
        cfg = kiosk_config(broker.port, shop_clip, pixel_bundle, "off", presence={"mode": "off"},
                           roi={"x": 100, "y": 60, "w": 120, "h": 120})
        kiosk = Kiosk(cfg)
        assert kiosk.run(threading.Event()) == "ended"
        col.wait_for(lambda m: False, timeout=0.5)
    finally:
        col.close()
    assert kiosk.pipeline.presenter is None
    events = unique_events([json.loads(p) for _, p, _ in col.messages])
    assert "presentation" not in events[0]
    check_against_ground_truth(events, shop_clip)
