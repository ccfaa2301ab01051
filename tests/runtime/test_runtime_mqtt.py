"""KioskMqtt against a real Mosquitto: retained status and last will, the
offline queue across a broker restart, the queue bound, commands, credentials."""

from __future__ import annotations

import getpass
import json
import logging
import socket
import subprocess
import threading
import time

import pytest
from runtime_support import SessionSubscriber
from support import Broker, Collector, find_mosquitto, poll_until

from edge_runtime.config import MqttConfig
from edge_runtime.mqtt import KioskMqtt

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


def cfg(port: int, **kw) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=1, reconnect_max_s=1,
                      metrics_interval_s=60, flush_timeout_s=5, **kw)


wait = poll_until


def test_status_retained_merged_and_offline_at_stop(broker, validate_message):
    mq = KioskMqtt(cfg(broker.port), "k1", status={"runtime_version": "0.1.0", "bundle_version": 3})
    assert mq.start(wait_s=5)
    mq.set_status(source_state="streaming")
    col = Collector(broker.port, ["kiosk/k1/status"])
    try:
        got = col.wait_for(lambda m: json.loads(m[1]).get("source_state") == "streaming")
        assert got and got[-1][2] in (True, False)
        status = json.loads(got[-1][1])
        assert status["online"] is True and status["bundle_version"] == 3
        validate_message("kiosk/k1/status", status)
        assert mq.stop(5)
        off = col.wait_for(lambda m: json.loads(m[1])["online"] is False)
        assert off and json.loads(off[-1][1])["reason"] == "shutdown"
    finally:
        col.close()
    # a late subscriber gets the retained offline status
    late = Collector(broker.port, ["kiosk/k1/status"])
    try:
        msg = late.wait_for(lambda m: True)
        assert msg[0][2] is True and json.loads(msg[0][1])["online"] is False
    finally:
        late.close()


def test_last_will_marks_offline_when_connection_drops(broker, validate_message):
    mq = KioskMqtt(cfg(broker.port), "k2")
    assert mq.start(wait_s=5)
    col = Collector(broker.port, ["kiosk/k2/status"])
    try:
        assert col.wait_for(lambda m: json.loads(m[1])["online"] is True)
        mq._client.socket().shutdown(socket.SHUT_RDWR)   # connection lost, no DISCONNECT sent
        will = col.wait_for(lambda m: json.loads(m[1]).get("reason") == "connection lost")
        assert will and json.loads(will[0][1])["online"] is False
        validate_message("kiosk/k2/status", json.loads(will[0][1]))
        # paho reconnects by itself and the kiosk says it is back
        n = len(col.on("kiosk/k2/status"))
        assert col.wait_for(lambda m: len(col.on("kiosk/k2/status")) > n
                            and json.loads(col.on("kiosk/k2/status")[-1])["online"] is True)
        assert mq.connects >= 2
    finally:
        mq.stop(2)
        col.close()


def test_offline_queue_survives_broker_restart(persistent_broker):
    b = persistent_broker
    sub = SessionSubscriber(b.port, ["kiosk/k3/match"], "sub-k3")
    mq = KioskMqtt(cfg(b.port), "k3")
    assert mq.start(wait_s=5)
    try:
        mq.publish_json("match", {"event_id": "e0"})
        assert sub.wait_until(lambda: len(sub.json_on("/match")) == 1)
        b.stop()
        assert wait(lambda: not mq.connected)
        for i in range(1, 6):
            mq.publish_json("match", {"event_id": f"e{i}"})
        mq.publish_json("metrics", {"x": 1}, qos=0)       # QoS 0 is not queued while offline
        assert mq.queue_depth >= 4
        b.start()
        assert sub.wait_until(lambda: len({m["event_id"] for m in sub.json_on("/match")}) == 6, 15)
        ids = [m["event_id"] for m in sub.json_on("/match")]
        assert sorted(set(ids)) == [f"e{i}" for i in range(6)]   # duplicates allowed, none lost
        assert mq.dropped == 0 and wait(lambda: mq.queue_depth == 0)
    finally:
        mq.stop(2)
        sub.close()


def test_queue_bound_drops_oldest_and_counts(persistent_broker):
    b = persistent_broker
    sub = SessionSubscriber(b.port, ["kiosk/k4/match"], "sub-k4")
    b.stop()
    mq = KioskMqtt(cfg(b.port, queue_max=3), "k4")
    mq.start()
    try:
        for i in range(5):
            mq.publish_json("match", {"event_id": f"e{i}"})
        assert mq.dropped == 2 and mq.queue_depth == 3
        b.start()
        # what the kiosk kept, the newest three, arrives once it is back
        assert sub.wait_until(lambda: len(sub.json_on("/match")) >= 3, 15)
        assert sorted({m["event_id"] for m in sub.json_on("/match")}) == ["e2", "e3", "e4"]
    finally:
        mq.stop(2)
        sub.close()


def test_command_handlers_survive_exceptions_and_reconnects(broker, caplog):
    got: list[bytes] = []
    mq = KioskMqtt(cfg(broker.port), "k5")

    def handler(payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler failed")
        got.append(payload)

    mq.add_command_handler("ping", handler)
    assert mq.start(wait_s=5)
    pub = Collector(broker.port, ["unused/#"])
    try:
        assert wait(lambda: mq.connects == 1)
        with caplog.at_level(logging.ERROR):
            for _ in range(40):   # until the kiosk's SUBACK is through
                pub.client.publish("kiosk/k5/cmd/ping", b"boom", qos=1)
                pub.client.publish("kiosk/k5/cmd/ping", b"one", qos=1)
                if wait(lambda: got, 0.5):
                    break
            assert got and set(got) == {b"one"}
        del got[1:]
        assert "handler failed" in caplog.text
        broker.restart()
        assert wait(lambda: mq.connects == 2, 15)
        assert wait(lambda: pub.client.is_connected(), 15)
        # resubscribed in on_connect: a command sent now (again until the
        # SUBACK is through) reaches the handler
        for _ in range(40):
            pub.client.publish("kiosk/k5/cmd/ping", b"two", qos=1)
            if wait(lambda: len(got) > 1, 0.5):
                break
        assert got[:2] == [b"one", b"two"]
    finally:
        mq.stop(2)
        pub.close()


def test_mqtt_311_and_password_from_env(tmp_path, monkeypatch, caplog):
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "kiosk6", "s3cret-pw"], check=True,
                   capture_output=True)
    pwfile.chmod(0o644)
    b = Broker(tmp_path / "auth", anonymous=False,
               extra_conf=f"allow_anonymous false\npassword_file {pwfile}\n"
               f"user {getpass.getuser()}\n")
    b.start()
    monkeypatch.setenv("KIOSK_MQTT_USERNAME", "kiosk6")
    monkeypatch.setenv("KIOSK_MQTT_PASSWORD", "s3cret-pw")
    col = Collector(b.port, ["kiosk/k6/#"], username="kiosk6", password="s3cret-pw")
    mq = KioskMqtt(cfg(b.port, protocol="3.1.1"), "k6")
    try:
        with caplog.at_level(logging.DEBUG):
            assert mq.start(wait_s=5)
            mq.publish_json("match", {"event_id": "x"})
            assert col.wait_for(lambda m: m[0] == "kiosk/k6/match")
        assert "s3cret-pw" not in caplog.text
    finally:
        mq.stop(2)
        col.close()
        b.stop()


def test_stop_is_bounded_when_broker_is_gone(broker):
    mq = KioskMqtt(cfg(broker.port), "k7")
    assert mq.start(wait_s=5)
    broker.stop()
    assert wait(lambda: not mq.connected)
    mq.publish_json("match", {"event_id": "lost"})
    t0 = time.monotonic()
    assert mq.stop(1.0) is False
    assert time.monotonic() - t0 < 8.0
    assert not any(t.name == "mqtt-publisher" and t.is_alive() for t in threading.enumerate())


def test_a_message_paho_refuses_is_dropped_not_retried(broker, caplog):
    mq = KioskMqtt(cfg(broker.port), "k8")
    col = Collector(broker.port, ["kiosk/k8/match"])
    try:
        assert mq.start(wait_s=5)
        with caplog.at_level(logging.ERROR):
            mq.publish_json("match/+", {"event_id": "bad"})   # wildcard: paho raises
            mq.publish_json("match", {"event_id": "good"})
            assert col.wait_for(lambda m: json.loads(m[1])["event_id"] == "good")
        assert "dropped" in caplog.text and mq.queue_depth == 0
    finally:
        mq.stop(2)
        col.close()
