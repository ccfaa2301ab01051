"""examples/subscriber.py against a real Mosquitto: prints each event once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[2]
SUBSCRIBER = ROOT / "examples" / "subscriber.py"


def _event(event_id: str, item: str = "Fruit/Kiwi", frame: int = 10) -> bytes:
    return json.dumps({
        "schema": "kiosk.match/1", "event_id": event_id, "kiosk_id": "k1", "camera_id": "cam0",
        "ts": "2026-01-01T00:00:00Z", "frame_index": frame, "source_ts": frame / 30,
        "latency_ms": 12.0, "bundle_version": "1",
        "matches": [{"item_id": item, "name": item.rsplit("/", 1)[-1], "score": 0.91, "rank": 1}],
    }).encode()


def _start(broker, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(SUBSCRIBER), "--broker", broker.url, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait for the SUBACK line so nothing is published before the subscription exists.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "subscribed to" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"subscriber did not subscribe: {proc.stderr.read()}")


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, payload in messages:
            c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_prints_each_event_once(broker):
    proc = _start(broker, "--count", "2", "--timeout", "15")
    _publish(broker.port, [("kiosk/k1/match", _event("a")), ("kiosk/k1/match", _event("a")),
                           ("kiosk/k1/match", b"not json"),
                           ("kiosk/k1/match", _event("b", "Vegetables/Carrots", 50))])
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert "event_id=a" in lines[0] and "item=Fruit/Kiwi" in lines[0]
    assert "event_id=b" in lines[1] and "item=Vegetables/Carrots" in lines[1]
    assert "1 duplicates dropped, 1 malformed" in err


def test_timeout_without_enough_events_fails(broker, tmp_path):
    jsonl = tmp_path / "events.jsonl"
    proc = _start(broker, "--count", "3", "--timeout", "2", "--json", "--jsonl", str(jsonl))
    _publish(broker.port, [("kiosk/k2/match", _event("x")), ("kiosk/k2/match", _event("x")),
                           ("kiosk/k2/status", b"{}")])
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, err
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == ["x"]
    assert [json.loads(line)["event_id"] for line in jsonl.read_text().splitlines()] == ["x"]


def test_shared_subscription_splits_events(broker):
    """Two members of one $share group: each event reaches exactly one of them."""
    a = _start(broker, "--share", "backend", "--timeout", "4", "--json")
    b = _start(broker, "--share", "backend", "--timeout", "4", "--json")
    _publish(broker.port, [(f"kiosk/k{i % 3}/match", _event(f"e{i}")) for i in range(10)])
    ids = []
    for p in (a, b):
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        ids += [json.loads(line)["event_id"] for line in out.splitlines()]
    assert sorted(ids) == sorted(f"e{i}" for i in range(10))
