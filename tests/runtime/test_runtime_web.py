"""The set-up page ([web]): the config check, access rules, the hub's rate cap,
and real HTTP against a real kiosk (real clip, ONNX Runtime, Mosquitto)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from support import Collector, poll_until
from test_runtime_pipeline import kiosk_config
from web_support import RunningKiosk, get_json, http

from edge_runtime.config import parse_config, parse_web_bind
from edge_runtime.web import WebContext, WebServer, access, create_app
from edge_runtime.web_hub import LiveHub, scene_words
from models.errors import ConfigError

TOKEN = "s3cret-test-token"


# ---------------------------------------------------------------- config and access rules
def test_non_loopback_bind_needs_a_token(monkeypatch):
    monkeypatch.delenv("KIOSK_WEB_TOKEN", raising=False)
    cfg = parse_config({"web": {"enabled": True, "host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match=r"^web\.host: 0\.0\.0\.0 is not a loopback address: "
                       r"set KIOSK_WEB_TOKEN"):
        cfg.web.check()
    parse_config({"web": {"enabled": True, "host": "127.0.0.1"}}).web.check()   # loopback: fine
    monkeypatch.setenv("KIOSK_WEB_TOKEN", TOKEN)
    cfg.web.check()
    assert cfg.web.token() == TOKEN


def test_cli_refuses_non_loopback_bind_without_token_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "run", "--web", "0.0.0.0:8080",
                        "--validate-config"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "web.host: 0.0.0.0 is not a loopback address" in lines[0], p.stderr


@pytest.mark.parametrize("text, want", [("127.0.0.1:8080", ("127.0.0.1", 8080)),
                                        (":0", ("127.0.0.1", 0)), ("[::1]:9000", ("::1", 9000))])
def test_web_bind_parses(text, want):
    assert parse_web_bind(text) == want


@pytest.mark.parametrize("text", ["8080x", "host", "h:99999", "h:"])
def test_bad_web_bind_is_a_config_error(text):
    with pytest.raises(ConfigError, match="--web"):
        parse_web_bind(text)


@pytest.mark.parametrize("method, given, token, want", [
    ("GET", None, None, 200), ("POST", None, None, 403), ("POST", "x", None, 403),
    ("GET", None, "t", 401), ("GET", "wrong", "t", 401), ("GET", "t", "t", 200),
    ("POST", None, "t", 401), ("POST", "t", "t", 200), ("POST", "tt", "t", 401)])
def test_access_rules(method, given, token, want):
    assert access(method, given, token) == want


# ---------------------------------------------------------------- the hub, pure
class _Frame:
    def __init__(self, value: int) -> None:
        self.image = np.full((48, 64, 3), value, np.uint8)


def test_hub_drops_frames_without_viewer_and_caps_the_rate():
    now = [0.0]
    hub = LiveHub(max_fps=5.0, clock=lambda: now[0])
    assert not hub.offer(_Frame(1))                  # nobody watches: dropped, never drawn
    with hub.watching():
        taken = []
        for i in range(30):                          # one second at 30 fps
            now[0] = i / 30
            taken.append(hub.offer(_Frame(i)))
        assert sum(taken) == 5                       # capped at 5 fps
        seq, jpeg = hub.wait_frame(0, timeout=0.1)
        assert seq == 5 and jpeg[:2] == b"\xff\xd8"
        assert hub.wait_frame(seq, timeout=0.05) is None   # nothing newer
        assert hub.fresh_after() == seq - 1                # a new viewer gets the latest...
    now[0] = 10.0
    assert hub.fresh_after() == 5                          # ...unless it is stale
    assert not hub.offer(_Frame(2)) and hub.viewers == 0
    hub.poll()                                       # a polling page counts for a while
    assert hub.offer(_Frame(3))


def test_hub_keeps_the_last_events_with_their_snapshots():
    hub = LiveHub(keep_events=3)
    view = np.random.default_rng(0).integers(0, 255, (300, 200, 3)).astype(np.uint8)
    for i in range(5):
        hub.event({"event_id": f"e{i}", "item_id": "x"}, view if i % 2 == 0 else None)
    got = hub.events()
    assert [e["event"]["event_id"] for e in got] == ["e4", "e3", "e2"]
    assert [e["snapshot"] for e in got] == [True, False, True]
    import cv2

    img = cv2.imdecode(np.frombuffer(hub.snapshot_jpeg("e4"), np.uint8), cv2.IMREAD_COLOR)
    assert max(img.shape[:2]) == 224
    assert hub.snapshot_jpeg("e3") is None and hub.snapshot_jpeg("e0") is None


def _info(present: bool, box=None, event: str = ""):
    from edge_runtime.presence import SceneState
    from edge_runtime.presenter import FrameInfo

    st = SceneState(present=present, differs=present, area=0.0, box=box,
                    mask=np.zeros((60, 80), np.uint8), scale=4.0, event=event)
    return FrameInfo(scene=st, offset=(0, 0))


def test_scene_words():
    import cv2

    rng = np.random.default_rng(0)
    frame = np.full((240, 320, 3), 120, np.uint8)
    frame[60:180, 100:220] = rng.integers(0, 255, (120, 120, 3))          # a sharp product
    assert scene_words(frame, _info(True, (100, 60, 120, 120))) == ["product in view"]
    assert scene_words(frame, _info(False)) == ["no product in view"]
    assert scene_words(frame, _info(False, event="learning")) == ["learning the empty counter"]
    assert scene_words(frame, _info(True, (150, 100, 20, 20))) == ["product too small"]
    blurred = frame.copy()
    blurred[60:180, 100:220] = cv2.GaussianBlur(frame[60:180, 100:220], (31, 31), 12)
    assert scene_words(blurred, _info(True, (100, 60, 120, 120))) == ["blurred"]
    assert scene_words(np.full((60, 80, 3), 10, np.uint8), None) == ["too dark"]


# ---------------------------------------------------------------- a server without a runtime
def test_without_token_pages_are_read_only(monkeypatch):
    hub = LiveHub()
    asked = []
    ctx = WebContext(hub, status=lambda: {"kiosk_id": "k"}, relearn=lambda: asked.append(1) or True)
    srv = WebServer("127.0.0.1", 0, create_app(ctx), hub).start()
    try:
        base = srv.url.rstrip("/")
        assert get_json(f"{base}/api/status")["kiosk_id"] == "k"
        code, _, body = http(f"{base}/api/relearn", method="POST")
        assert code == 403 and b"token" in body and not asked
        code, headers, page = http(f"{base}/")
        assert code == 200 and b'<img id="live"' in page
        assert b"http://" not in page and b"https://" not in page   # no external asset
        assert http(f"{base}/metrics")[0] == 404                    # [metrics] prometheus off
    finally:
        srv.stop()


def test_relearn_without_scene_model_is_refused():
    hub = LiveHub()
    ctx = WebContext(hub, status=dict, relearn=lambda: False, token=TOKEN)
    srv = WebServer("127.0.0.1", 0, create_app(ctx), hub).start()
    try:
        code, _, body = http(f"{srv.url}api/relearn", method="POST", token=TOKEN)
        assert code == 409 and b"presence is off" in body
    finally:
        srv.stop()


def test_taken_port_is_a_config_error():
    hub = LiveHub()
    ctx = WebContext(hub, status=dict, relearn=lambda: True)
    srv = WebServer("127.0.0.1", 0, create_app(ctx), hub).start()
    try:
        with pytest.raises(ConfigError, match=rf"^web: cannot serve on 127\.0\.0\.1:{srv.port}"):
            WebServer("127.0.0.1", srv.port, create_app(ctx), hub)
    finally:
        srv.stop()


# ---------------------------------------------------------------- a real kiosk
def _web_kiosk(broker, clip, bundle, kiosk_id: str):
    return kiosk_config(broker.port, clip, bundle, kiosk_id,
                        source={"realtime": True, "loop": True},
                        mqtt={"outbox": "memory"}, metrics={"prometheus": True},
                        web={"enabled": True, "port": 0})


def test_page_of_a_running_kiosk(broker, shop_clip, pixel_bundle, monkeypatch, validate_message):
    """Token enforced, status, events with snapshots as published on MQTT, the
    live stream, re-learn, and /metrics through prometheus_client."""
    import cv2
    from prometheus_client.parser import text_string_to_metric_families

    monkeypatch.setenv("KIOSK_WEB_TOKEN", TOKEN)
    col = Collector(broker.port, ["kiosk/webk/match"])
    try:
        with RunningKiosk(_web_kiosk(broker, shop_clip, pixel_bundle, "webk")) as k:
            base = k.base
            for path in ("/", "/api/status", "/api/events", "/stream.mjpg", "/metrics"):
                assert http(base + path)[0] == 401, path
                assert http(f"{base}{path}?token=wrong")[0] == 401, path
            assert http(f"{base}/api/relearn", method="POST")[0] == 401

            status = get_json(f"{base}/api/status", TOKEN)
            assert status["kiosk_id"] == "webk" and status["mqtt_connected"] is True
            assert status["backend"] == "onnxruntime" and status["bundle_version"] >= 1
            assert len(status["encoder_sha256"]) == 64 and len(status["index_sha256"]) == 64
            m = status["metrics"]
            assert m["source_state"] == "streaming" and m["queue_depth"] >= 0
            assert {"fps", "latency_ms_p50", "latency_ms_p99"} <= set(m)

            # An event after the first product (frames 20-64 of the clip, at 30 fps).
            assert poll_until(lambda: get_json(f"{base}/api/events", TOKEN)["events"], 20, 0.2)
            ev = get_json(f"{base}/api/events", TOKEN)["events"][-1]
            assert ev["snapshot"] == f"/events/{ev['event']['event_id']}.jpg"
            code, headers, jpeg = http(base + ev["snapshot"], token=TOKEN)
            assert code == 200 and headers["content-type"] == "image/jpeg"
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and min(img.shape[:2]) >= 16
            assert get_json(base + ev["json"], TOKEN) == ev["event"]
            assert col.wait_for(lambda msg: json.loads(msg[1])["event_id"] == ev["event"]["event_id"])
            published = next(json.loads(p) for _, p, _ in col.messages
                             if json.loads(p)["event_id"] == ev["event"]["event_id"])
            assert published == ev["event"]                   # the JSON as published
            validate_message("kiosk/webk/match", ev["event"])

            # The live view: real MJPEG parts, drawn frames of the clip's size.
            frames = _mjpeg_frames(f"{base}/stream.mjpg?token={TOKEN}", 3)
            for f in frames:
                got = cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR)
                assert got.shape == (240, 320, 3)
            assert poll_until(lambda: k.kiosk.pipeline.live.viewers == 0, 5)   # viewer left
            code, headers, one = http(f"{base}/frame.jpg", token=TOKEN)   # for polling pages
            assert code == 200 and cv2.imdecode(np.frombuffer(one, np.uint8),
                                                cv2.IMREAD_COLOR).shape == (240, 320, 3)
            assert get_json(f"{base}/api/status", TOKEN)["view"]   # words for the last frame

            # Re-learn: refused without the token, honoured by the frame loop with it.
            assert http(f"{base}/api/relearn", method="POST", token="nope")[0] == 401
            assert k.kiosk.pipeline.relearnt == 0
            code, _, body = http(f"{base}/api/relearn", method="POST", token=TOKEN)
            assert code == 202 and json.loads(body) == {"relearn": "requested"}
            assert poll_until(lambda: k.kiosk.pipeline.relearnt == 1, 5)

            code, headers, body = http(f"{base}/metrics", token=TOKEN)
            assert code == 200 and headers["content-type"].startswith("text/plain")
            samples = {s.name: s for fam in text_string_to_metric_families(body.decode())
                       for s in fam.samples}
            assert samples["kiosk_frames"].labels == {"kiosk_id": "webk"}
            assert samples["kiosk_frames"].value > 0 and "kiosk_latency_ms_p99" in samples
    finally:
        col.close()
    assert k.result == ["stopped"]


def _mjpeg_frames(url: str, n: int, timeout: float = 10.0) -> list[bytes]:
    """The first ``n`` JPEG parts of a multipart/x-mixed-replace stream (read raw)."""
    import urllib.request

    out: list[bytes] = []
    with urllib.request.urlopen(url, timeout=timeout) as r:
        ctype = r.headers["content-type"]
        assert ctype.startswith("multipart/x-mixed-replace; boundary=")
        deadline = time.monotonic() + timeout
        buf = b""
        while len(out) < n and time.monotonic() < deadline:
            buf += r.read1(65536)
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = buf[:head_end].decode()
                length = int(next(line.split(":")[1] for line in head.splitlines()
                                  if line.lower().startswith("content-length")))
                start = head_end + 4
                if len(buf) < start + length + 2:
                    break
                out.append(buf[start:start + length])
                buf = buf[start + length + 2:]
    assert len(out) >= n, f"only {len(out)} frames"
    return out[:n]
