"""The shipped broker configuration (deploy/mosquitto/) loaded into a real
Mosquitto: no anonymous access, kiosks confined to their own topics, only the
operator may publish commands, and the TLS listener works with the CA made by
make-test-ca.sh. MQTT 5, so refusals come back as reason codes."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support import Broker, Collector, find_mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "deploy" / "mosquitto"
USERS = {"kiosk-a": "pw-a", "kiosk-b": "pw-b", "operator": "pw-op"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto / mosquitto_passwd not installed")
    work = tmp_path_factory.mktemp("secure-broker")
    env = {**os.environ, **{f"PASSWORD_{u.replace('-', '_')}": p for u, p in USERS.items()}}
    subprocess.run(["bash", str(CONF_DIR / "make-passwd.sh"), str(work / "passwd"), *USERS],
                   check=True, env=env, capture_output=True)
    tls = shutil.which("openssl") is not None
    if tls:
        subprocess.run(["bash", str(CONF_DIR / "make-test-ca.sh"), str(work / "certs"), "localhost"],
                       check=True, capture_output=True, timeout=60)
    plain_port, tls_port = free_port(), free_port()
    conf = (CONF_DIR / "mosquitto.conf").read_text()
    conf = (conf.replace("/etc/mosquitto/passwd", str(work / "passwd"))
            .replace("/etc/mosquitto/acl", str(CONF_DIR / "acl"))
            .replace("/etc/mosquitto/certs/", str(work / "certs") + "/")
            .replace("persistence true", "persistence false")
            .replace("persistence_location /var/lib/mosquitto/", "")
            .replace("listener 1883 127.0.0.1", f"listener {plain_port} 127.0.0.1"))
    if tls:
        conf = conf.replace("listener 8883\n", f"listener {tls_port} 127.0.0.1\n")
    else:  # keep only the plain listener
        conf = conf.split("listener 8883")[0] + f"listener {plain_port} 127.0.0.1\n"
    if os.geteuid() == 0:  # mosquitto would drop to user "mosquitto", who cannot read tmp files
        conf = "user root\n" + conf
    broker = Broker(work, port=plain_port)
    broker.conf.write_text(conf)
    broker.start()
    yield broker, (tls_port if tls else None), work
    broker.stop()


def _connect(port, user=None, password=None, tls_ca=None):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    if tls_ca:
        c.tls_set(ca_certs=str(tls_ca), cert_reqs=ssl.CERT_REQUIRED)
    done, result = threading.Event(), {}
    c.on_connect = lambda cl, ud, fl, rc, pr=None: (result.update(rc=rc), done.set())
    acks, cond = {}, threading.Condition()

    def on_publish(cl, ud, mid, rc=None, pr=None):
        with cond:
            acks[mid] = rc
            cond.notify_all()
    c.on_publish = on_publish
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    c.acks, c.cond = acks, cond
    return c, result["rc"]


def _publish(c, topic: str, payload: bytes = b"{}") -> object:
    info = c.publish(topic, payload, qos=1)
    with c.cond:
        c.cond.wait_for(lambda: info.mid in c.acks, 5)
    return c.acks[info.mid]


def _close(c):
    c.disconnect()
    c.loop_stop()


def test_anonymous_and_wrong_password_cannot_connect(secured):
    broker, _, _ = secured
    c, rc = _connect(broker.port)
    assert rc.is_failure, rc
    _close(c)
    c, rc = _connect(broker.port, "kiosk-a", "wrong")
    assert rc.is_failure, rc
    _close(c)


def test_kiosk_is_confined_to_its_own_topics(secured):
    broker, _, _ = secured
    spy = Collector(broker.port, ["kiosk/#"], username="operator", password="pw-op")
    a, rc = _connect(broker.port, "kiosk-a", "pw-a")
    assert not rc.is_failure, rc
    try:
        for topic in ("kiosk/kiosk-b/match", "kiosk/kiosk-b/status", "kiosk/kiosk-b/update/status",
                      "kiosk/kiosk-b/cmd/update", "kiosk/kiosk-a/cmd/update",
                      "kiosk/kiosk-a/cmd/rollback", "kiosk/kiosk-a/other"):
            rc = _publish(a, topic)
            assert rc.is_failure and "authori" in str(rc).lower(), (topic, rc)
        for sub in ("match", "status", "metrics", "update/status"):
            assert not _publish(a, f"kiosk/kiosk-a/{sub}").is_failure, sub
        assert spy.wait_for(lambda m: m[0] == "kiosk/kiosk-a/update/status", 5)
        assert not [t for t, _, _ in spy.messages if "kiosk-b" in t or "/cmd/" in t]
    finally:
        _close(a)
        spy.close()


def test_only_the_operator_publishes_commands_and_each_kiosk_reads_only_its_own(secured):
    broker, _, _ = secured
    a = Collector(broker.port, ["kiosk/+/cmd/#"], username="kiosk-a", password="pw-a")
    b = Collector(broker.port, ["kiosk/kiosk-b/cmd/#"], username="kiosk-b", password="pw-b")
    op, rc = _connect(broker.port, "operator", "pw-op")
    try:
        assert not _publish(op, "kiosk/kiosk-b/cmd/update").is_failure
        assert not _publish(op, "kiosk/kiosk-a/cmd/rollback").is_failure
        assert b.wait_for(lambda m: m[0] == "kiosk/kiosk-b/cmd/update", 5)
        assert a.wait_for(lambda m: m[0] == "kiosk/kiosk-a/cmd/rollback", 5)
        assert not [t for t, _, _ in a.messages if "kiosk-b" in t]
        assert _publish(op, "kiosk/kiosk-b/match").is_failure  # operator does not fake events
    finally:
        _close(op)
        a.close()
        b.close()


def test_an_oversize_command_is_refused_by_the_broker(secured):
    """message_size_limit in the shipped config: before, a client allowed to
    publish commands could hand each kiosk payloads of up to 256 MB."""
    broker, _, _ = secured
    a = Collector(broker.port, ["kiosk/kiosk-a/cmd/#"], username="kiosk-a", password="pw-a")
    op, rc = _connect(broker.port, "operator", "pw-op")
    dropped = threading.Event()
    op.on_disconnect = lambda *args: dropped.set()
    try:
        assert not _publish(op, "kiosk/kiosk-a/cmd/rollback", b'{"small": 1}').is_failure
        big = op.publish("kiosk/kiosk-a/cmd/update", b'{"pad": "' + b"x" * 70_000 + b'"}', qos=1)
        # Mosquitto 2.0 answers with reason "packet too large" (0x95, which MQTT 5 does
        # not allow in a PUBACK, so paho drops the connection) or a failure code
        with op.cond:
            op.cond.wait_for(lambda: big.mid in op.acks or dropped.is_set(), 5)
        assert dropped.is_set() or op.acks[big.mid].is_failure
        assert a.wait_for(lambda m: m[0] == "kiosk/kiosk-a/cmd/rollback", 5)
        time.sleep(0.5)
        assert [len(p) for t, p, _ in a.messages] == [len(b'{"small": 1}')]  # never delivered
    finally:
        op.reconnect_delay_set(60, 60)
        _close(op)
        a.close()


def test_tls_listener_with_the_test_ca(secured):
    broker, tls_port, work = secured
    if tls_port is None:
        pytest.skip("openssl not installed")
    c, rc = _connect(tls_port, "kiosk-a", "pw-a", tls_ca=work / "certs" / "ca.crt")
    try:
        assert not rc.is_failure, rc
        assert not _publish(c, "kiosk/kiosk-a/status").is_failure
        assert _publish(c, "kiosk/kiosk-a/cmd/update").is_failure
    finally:
        _close(c)
    c, rc = _connect(tls_port, tls_ca=work / "certs" / "ca.crt")
    assert rc.is_failure
    _close(c)
