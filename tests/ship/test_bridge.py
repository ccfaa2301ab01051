"""deploy/mosquitto/bridge.example.conf loaded into a real Mosquitto "store"
broker, bridged to a second real Mosquitto standing in for the cloud."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from support import Broker, Collector, find_mosquitto

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "mosquitto" / "bridge.example.conf"
TLS_KEYS = ("bridge_cafile", "bridge_certfile", "bridge_keyfile")


def _bridge_conf(cloud_port: int) -> str:
    """The example as shipped, pointed at the loopback 'cloud' without TLS."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "address":
            line = f"address 127.0.0.1:{cloud_port}"
        elif key in TLS_KEYS:
            continue
        lines.append(line)
    return "\n".join(lines)


def _publish(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_example_has_tls_and_prefixes():
    text = EXAMPLE.read_text()
    for key in (*TLS_KEYS, "connection", "address", "bridge_protocol_version"):
        assert re.search(rf"^{key} \S+", text, re.M), key
    topics = re.findall(r"^topic (\S+) (out|in) ([012]) (\S+) (\S+)$", text, re.M)
    assert {t[0] for t in topics} >= {"+/match", "+/status", "+/metrics", "+/update/status",
                                      "+/cmd/#"}
    assert all(t[3] == "kiosk/" for t in topics)


def test_bridge_forwards_events_up_and_commands_down(tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    with Broker(tmp_path / "cloud") as cloud:
        store = Broker(tmp_path / "store", extra_conf=_bridge_conf(cloud.port))
        with store:
            up = Collector(cloud.port, ["stores/STORE-042/#"])
            down = Collector(store.port, ["kiosk/+/cmd/#"])
            try:
                # The bridge announces itself (retained) once it is connected.
                assert up.wait_for(lambda m: m[0] == "stores/STORE-042/bridge/state"
                                   and m[1] == b"1", timeout=15)
                event = json.dumps({"event_id": "e1"}).encode()
                _publish(store.port, "kiosk/kiosk-01/match", event)
                _publish(store.port, "kiosk/kiosk-01/status", b'{"online": true}', retain=True)
                got = up.wait_for(lambda m: m[0] == "stores/STORE-042/kiosk/kiosk-01/match")
                assert got and got[0][1] == event
                assert up.wait_for(lambda m: m[0] == "stores/STORE-042/kiosk/kiosk-01/status")
                # Other topics stay in the store.
                _publish(store.port, "store/private/thing", b"x")
                _publish(cloud.port, "stores/STORE-042/kiosk/kiosk-01/cmd/update", b"{}")
                got = down.wait_for(lambda m: m[0] == "kiosk/kiosk-01/cmd/update")
                assert got and got[0][1] == b"{}"
                time.sleep(0.3)
                assert not [m for m in up.messages if "private" in m[0]]
            finally:
                up.close()
                down.close()
