"""Operator-side MQTT helpers shared by `deploy push`, `rollback` and `status`.

Broker URL ``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS). The
operator's credentials come from --username/--password or the environment
(DEPLOY_MQTT_USERNAME, DEPLOY_MQTT_PASSWORD), never from a file in the repo.
MQTT 5 throughout, so a publish the broker's ACL refuses comes back as a
reason code (Mosquitto acknowledges it silently under 3.1.1).

Groups: every kiosk lists its ``groups`` (kiosk.toml ``[update] groups``) in
its retained status, so ``--group NAME`` is resolved here, on the operator's
side, from the fleet's retained statuses, and one command goes to each
kiosk's own topic. Kiosks need no extra subscription and the ACL stays
"a kiosk reads only kiosk/<its id>/cmd/#". A kiosk that has never connected
has no retained status and is not reached by --group: name it with --kiosk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from models.errors import ConfigError, KioskError

__all__ = ["add_broker_arguments", "add_target_arguments", "connect", "publish_command",
           "read_statuses", "resolve_targets", "parse_broker_url", "send_and_follow"]

FINAL = ("active", "rejected", "rolled_back", "revoked")

_KIOSK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ConfigError(f"--broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    tls = u.scheme == "mqtts"
    try:
        port = u.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(f"--broker {url!r}: bad port") from None
    return u.hostname, port, tls


def add_broker_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker", default=os.environ.get("DEPLOY_MQTT_BROKER", "mqtt://localhost:1883"),
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT (env DEPLOY_MQTT_BROKER)")
    g.add_argument("--username", default=None, help="operator account (env DEPLOY_MQTT_USERNAME)")
    g.add_argument("--password", default=None, help="(env DEPLOY_MQTT_PASSWORD; prefer the env)")
    g.add_argument("--cafile", default=None, help="CA certificate for mqtts:// (default: system CAs)")
    g.add_argument("--cert", default=None, help="client certificate (brokers that require one)")
    g.add_argument("--key", default=None, help="client certificate key")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker")


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--kiosk", action="append", metavar="ID", help="kiosk id (repeatable)")
    t.add_argument("--group", metavar="NAME", help="every kiosk whose retained status lists NAME")


def connect(args: argparse.Namespace, client_id_prefix: str = "deploy"):
    """A connected, looping paho client (MQTT 5); KioskError when refused."""
    import paho.mqtt.client as mqtt

    host, port, tls = parse_broker_url(args.broker)
    user = args.username or os.environ.get("DEPLOY_MQTT_USERNAME")
    password = args.password or os.environ.get("DEPLOY_MQTT_PASSWORD")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"{client_id_prefix}-{os.getpid()}-{int(time.time() * 1000) % 100000}",
                         protocol=mqtt.MQTTv5)
    if user:
        client.username_pw_set(user, password)
    if tls or args.cafile:
        client.tls_set(ca_certs=args.cafile, certfile=args.cert, keyfile=args.key)
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(c, userdata, flags, rc, props=None):
        result["rc"] = rc
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise KioskError(f"cannot reach the broker at {host}:{port} ({exc})") from None
    client.loop_start()
    if not done.wait(args.timeout):
        _close(client)
        raise KioskError(f"no answer from the broker at {host}:{port} within {args.timeout:.0f} s")
    rc = result["rc"]
    if rc.is_failure:
        _close(client)
        raise KioskError(f"the broker at {host}:{port} refused the connection: {rc} "
                         "(check --username/--password or DEPLOY_MQTT_USERNAME/PASSWORD)")
    return client


def _close(client) -> None:
    try:
        client.disconnect()
    finally:
        client.loop_stop()


close = _close


def publish_command(client, topic: str, payload: dict, timeout: float) -> None:
    """Publish at QoS 1 and wait for the PUBACK; a refusal (ACL) is a KioskError."""
    acks: dict[int, Any] = {}
    cond = threading.Condition()

    def on_publish(c, userdata, mid, rc=None, props=None):
        with cond:
            acks[mid] = rc
            cond.notify_all()

    client.on_publish = on_publish
    info = client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)
    deadline = time.monotonic() + timeout
    with cond:
        while info.mid not in acks and time.monotonic() < deadline:
            cond.wait(0.1)
    if info.mid not in acks:
        raise KioskError(f"{topic}: the broker did not acknowledge the command within {timeout:.0f} s")
    rc = acks[info.mid]
    if rc is not None and getattr(rc, "is_failure", False):
        raise KioskError(f"{topic}: the broker refused the command: {rc} (is this account "
                         "allowed to write kiosk/+/cmd/#?)")


def read_statuses(client, wait_s: float = 2.0, quiet_s: float = 0.5) -> dict[str, dict]:
    """Retained ``kiosk/+/status`` messages: {kiosk id: status}. Stops ``quiet_s``
    after the last message, or at ``wait_s``, whichever comes first."""
    statuses: dict[str, dict] = {}
    cond = threading.Condition()
    last = [time.monotonic()]

    def on_message(c, userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) != 3:
            return
        try:
            body = json.loads(msg.payload.decode("utf-8")) if msg.payload else None
        except (UnicodeDecodeError, ValueError):
            body = {"invalid": True}
        with cond:
            if isinstance(body, dict):
                statuses[parts[1]] = body
            elif body is None:  # a cleared retained status
                statuses.pop(parts[1], None)
            last[0] = time.monotonic()
            cond.notify_all()

    client.on_message = on_message
    start = time.monotonic()
    last[0] = start
    client.subscribe("kiosk/+/status", qos=1)
    with cond:
        while True:
            now = time.monotonic()
            if now - start >= wait_s or (statuses and now - last[0] >= quiet_s):
                break
            cond.wait(0.05)
    client.unsubscribe("kiosk/+/status")
    return dict(statuses)


def resolve_targets(args: argparse.Namespace, client) -> list[str]:
    if args.kiosk:
        for k in args.kiosk:
            if not _KIOSK_ID.match(k):
                raise ConfigError(f"--kiosk {k!r}: kiosk ids are letters, digits, '_', '.', '-'")
        return list(dict.fromkeys(args.kiosk))
    statuses = read_statuses(client, wait_s=max(1.0, min(args.timeout, 5.0)))
    ids = sorted(k for k, s in statuses.items()
                 if isinstance(s.get("groups"), list) and args.group in s["groups"])
    if not ids:
        raise KioskError(f"--group {args.group}: no kiosk's retained status lists this group "
                         f"({len(statuses)} kiosk(s) seen)")
    return ids


def send_and_follow(client, targets: list[str], name: str, make_payload: Callable[[], dict], *,
                    timeout: float, wait_s: float, success: str) -> int:
    """Publish one ``cmd/{name}`` command per kiosk; with ``wait_s`` > 0 follow
    each kiosk's update/status (printing every step) until a final state.
    KioskError when a kiosk ends in another state than ``success`` or says
    nothing within ``wait_s``."""
    results: dict[str, dict] = {}
    cond = threading.Condition()
    commands: dict[str, str] = {}
    if wait_s > 0:
        def on_message(c, userdata, msg):
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            kiosk = msg.topic.split("/")[1]
            if isinstance(body, dict) and body.get("command_id") == commands.get(kiosk):
                why = ": ".join(str(body[k]) for k in ("error", "reason") if body.get(k))
                print(f"{kiosk}: {body.get('state')}" + (f" ({why})" if why else ""), flush=True)
                if body.get("state") in FINAL:
                    with cond:
                        results[kiosk] = body
                        cond.notify_all()
        client.on_message = on_message
        client.subscribe([(f"kiosk/{k}/update/status", 1) for k in targets])
        time.sleep(0.2)  # let the subscription land before the first command
    for kiosk in targets:
        payload = make_payload()
        with cond:
            commands[kiosk] = payload["command_id"]
        publish_command(client, f"kiosk/{kiosk}/cmd/{name}", payload, timeout)
        print(f"{kiosk}: {name} sent (command {payload['command_id']})", flush=True)
    if wait_s <= 0:
        return 0
    deadline = time.monotonic() + wait_s
    with cond:
        while len(results) < len(targets) and time.monotonic() < deadline:
            cond.wait(0.2)
    missing = [k for k in targets if k not in results]
    for k in missing:
        print(f"{k}: no result within {wait_s:.0f} s (offline? see deploy status)")
    failed = [k for k, r in results.items() if r.get("state") != success]
    if failed or missing:
        raise KioskError(f"{len(failed)} kiosk(s) rejected the {name}, "
                         f"{len(missing)} did not answer")
    return 0
