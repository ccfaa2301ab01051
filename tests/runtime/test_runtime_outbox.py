"""The durable outbox: unit behaviour of the SQLite queue, the reconnect
backoff, and real processes: a kiosk SIGKILLed during a broker outage loses
no match event, a kiosk that stops with events undelivered says so in its
exit status, and the shipped broker settings keep what the broker
acknowledged across a kill -9 of the broker."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_support import SessionSubscriber
from support import Broker, find_mosquitto, poll_until

from edge_runtime.mqtt import backoff_s
from edge_runtime.outbox import MemoryOutbox, SqliteOutbox, default_outbox_path

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the queue itself

@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_fifo_bounded_by_count_and_bytes_oldest_dropped(tmp_path, kind):
    def make(**kw):
        return SqliteOutbox(tmp_path / "o.sqlite", **kw) if kind == "sqlite" else MemoryOutbox(**kw)

    box = make(max_messages=3, max_bytes=1 << 20)
    for i in range(5):
        box.put("t", f"m{i}".encode(), 1)
    assert len(box) == 3 and box.dropped == 2
    assert [box.head().payload] == [b"m2"]
    box.remove(box.head().id)
    assert box.head().payload == b"m3" and len(box) == 2
    box.close()
    box = make(max_messages=100, max_bytes=250)
    for i in range(5):
        box.put("t", bytes([i]) * 100, 1)          # 500 bytes offered, 250 allowed
    assert len(box) == 2 and box.head().payload == bytes([3]) * 100
    box.put("t", b"x" * 1000, 1)                     # one larger than the bound is still kept
    assert len(box) == 1 and box.head().payload == b"x" * 1000


def test_sqlite_outbox_survives_reopen_in_wal_mode(tmp_path):
    path = tmp_path / "state" / "o.sqlite"
    box = SqliteOutbox(path, max_messages=2)
    for i in range(4):
        box.put("kiosk/k/match", json.dumps({"event_id": f"e{i}"}).encode(), 1)
    first = box.head()
    box.close()
    again = SqliteOutbox(path, max_messages=2)       # what a restart sees
    assert again.carried_over == 2 and again.head() == first
    assert again.dropped_total == 2 and again.dropped == 0
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_an_unreadable_outbox_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    box = SqliteOutbox(path)
    box.put("t", b"x", 1)
    assert len(box) == 1 and list(tmp_path.glob("o.sqlite.corrupt-*"))
    assert "unreadable" in caplog.text
    box.close()


def test_default_location_is_the_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert default_outbox_path("k1") == tmp_path / "a" / "outbox-k1.sqlite"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "x"))
    assert default_outbox_path("k1") == tmp_path / "x" / "kiosk" / "outbox-k1.sqlite"


def test_backoff_is_capped_at_a_few_seconds_with_jitter():
    """Before: paho's own backoff doubled up to mqtt.reconnect_max_s = 60 s, so a
    kiosk could stay away a minute after the broker was back, in lockstep."""
    from edge_runtime.config import MqttConfig

    cfg = MqttConfig()
    assert cfg.reconnect_max_s <= 5
    delays = [[backoff_s(a, cfg.reconnect_min_s, cfg.reconnect_max_s, random.Random(seed))
               for a in range(12)] for seed in range(20)]
    assert all(0 < d <= cfg.reconnect_max_s for row in delays for d in row)
    assert all(row[0] <= cfg.reconnect_min_s for row in delays)
    assert len({round(row[-1], 6) for row in delays}) > 10      # kiosks do not reconnect together
    assert min(row[-1] for row in delays) >= cfg.reconnect_max_s / 2


# ---------------------------------------------------------------- real processes

def _kiosk(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "run", *args],
                                cwd=REPO, env=env, stdout=f, stderr=f)


def _logged_events(log: Path) -> list[str]:
    ids = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("event_id") and rec["msg"].startswith("match "):
                ids.append(rec["event_id"])
    return ids


def test_sigkill_during_a_broker_outage_loses_no_event(persistent_broker, shop_clip,
                                                       pixel_bundle, tmp_path):
    """Before: events queued while the broker was down lived in memory only;
    a kiosk stopped or killed then lost them."""
    b = persistent_broker
    sub = SessionSubscriber(b.port, ["kiosk/sk/match"], "sub-sk")
    args = ["--source", str(shop_clip.path), "--bundle", str(pixel_bundle), "--broker", b.url,
            "--kiosk-id", "sk", "--loop", "--realtime", "--log-format", "json",
            "--outbox", str(tmp_path / "outbox.sqlite")]
    first = _kiosk(args, tmp_path / "first.log")
    second = None
    try:
        assert sub.wait_until(lambda: len(sub.json_on("/match")) >= 1, 60), "no event delivered"
        b.stop()
        during = len(_logged_events(tmp_path / "first.log"))
        assert poll_until(lambda: len(_logged_events(tmp_path / "first.log")) >= during + 2, 30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        sent = set(_logged_events(tmp_path / "first.log"))
        got = {m["event_id"] for m in sub.json_on("/match")}
        assert sent - got, "some events must have been waiting in the outbox"
        b.start()
        second = _kiosk(args, tmp_path / "second.log")
        assert sub.wait_until(lambda: sent <= {m["event_id"] for m in sub.json_on("/match")}, 60), (
            sorted(sent - {m["event_id"] for m in sub.json_on("/match")}))
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
        log = (tmp_path / "second.log").read_text()
        assert re.search(r"\d+ message\(s\) from an earlier run will be sent first", log)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        sub.close()


def test_exit_status_says_events_were_left_undelivered(tmp_path, shop_clip, pixel_bundle):
    """Before: "MQTT stopped with 2 message(s) undelivered" in the log, exit 0."""
    from support import free_port

    dead = free_port()
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {dead}\nflush_timeout_s = 0.5\n'
                      f'[kiosk]\nid = "ex"\n[logging]\nformat = "json"\n')
    args = ["--config", str(config), "--source", str(shop_clip.path), "--bundle", str(pixel_bundle)]
    run = _kiosk([*args, "--outbox", str(tmp_path / "o.sqlite")], tmp_path / "a.log")
    assert run.wait(120) == 3
    assert _logged_events(tmp_path / "a.log") and "kept in the outbox" in (tmp_path / "a.log").read_text()
    run = _kiosk([*args, "--outbox", "memory"], tmp_path / "b.log")
    assert run.wait(120) == 3
    assert "they are lost" in (tmp_path / "b.log").read_text()


def _shipped_persistence(store: Path) -> str:
    """The persistence lines of deploy/mosquitto/mosquitto.conf, pointed at ``store``."""
    conf = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    lines = [ln for ln in conf.splitlines() if ln.startswith(("persistence", "autosave"))]
    return "\n".join(f"persistence_location {store}/" if ln.startswith("persistence_location")
                     else ln for ln in lines)


def test_kill_9_of_the_broker_loses_nothing_it_acknowledged(tmp_path):
    """Before: persistence without autosave_interval saved the broker's state
    only at a clean exit (or every 30 minutes); a crash lost what it held."""
    import getpass

    import paho.mqtt.client as mqtt

    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    (tmp_path / "db").mkdir()
    b = Broker(tmp_path / "b", extra_conf=_shipped_persistence(tmp_path / "db")
               + f"\nuser {getpass.getuser()}\n").start()
    try:
        sub = SessionSubscriber(b.port, ["kiosk/k9/match"], "sub-k9")
        sub.client.disconnect()              # away: the broker queues for its session
        sub.client.loop_stop()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        infos = [pub.publish("kiosk/k9/match", json.dumps({"event_id": f"e{i}"}), qos=1)
                 for i in range(20)]
        for info in infos:
            info.wait_for_publish(10)        # every PUBACK is in: the broker has them
        pub.loop_stop()
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        b.start()
        sub = SessionSubscriber(b.port, ["kiosk/k9/match"], "sub-k9")
        assert sub.wait_until(lambda: len({m["event_id"] for m in sub.json_on("/match")}) == 20,
                              15), sub.json_on("/match")
        sub.close()
    finally:
        b.stop()


def test_back_within_seconds_after_a_long_broker_outage(broker):
    """Default settings: after 10 s down, connected again within the backoff
    cap (5 s) of the broker's return. Before: 1, 2, 4, 8 s... up to 60 s, so
    the next try after a 10 s outage came at 15 s."""
    from edge_runtime.config import MqttConfig
    from edge_runtime.mqtt import KioskMqtt

    mq = KioskMqtt(MqttConfig(host="127.0.0.1", port=broker.port), "bo")
    assert mq.start(wait_s=5)
    try:
        broker.stop()
        assert poll_until(lambda: not mq.connected, 5)
        time.sleep(10)
        broker.start()
        back = time.monotonic()
        assert poll_until(lambda: mq.connects == 2, 15)
        assert time.monotonic() - back <= mq.cfg.reconnect_max_s + 1.0
    finally:
        mq.stop(1)
