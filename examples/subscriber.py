#!/usr/bin/env python3
"""Example back-end consumer: print kiosk match events as they arrive.

Match events are published at QoS 1, so a consumer can receive the same event
twice (a redelivery after a reconnect); every event carries a unique
``event_id``, and this consumer prints each one once. Several copies of this
consumer can share the load with an MQTT 5 shared subscription
(``--share GROUP`` subscribes to ``$share/GROUP/kiosk/+/match``: the broker
hands each event to one member of the group).

Only needs paho-mqtt 2.x (``pip install "paho-mqtt>=2,<3"``)::

    python examples/subscriber.py --broker mqtt://127.0.0.1:1883
    python examples/subscriber.py --broker mqtts://broker.example:8883 --cafile ca.crt \\
        --username backend --share billing
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

DEFAULT_TOPIC = "kiosk/+/match"


class Deduplicator:
    """Remembers the last ``size`` event ids (bounded, so a consumer that runs
    for months does not grow without limit)."""

    def __init__(self, size: int = 10000) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, event_id: str) -> bool:
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return False
        self._seen[event_id] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


def format_event(topic: str, ev: dict) -> str:
    """One human-readable line: time, kiosk, frame, best match."""
    matches = ev.get("matches") or []
    best = matches[0] if matches and isinstance(matches[0], dict) else {}
    score = best.get("score")
    score_txt = f"{score:.3f}" if isinstance(score, (int, float)) else "?"
    kiosk = ev.get("kiosk_id") or topic.split("/")[1]
    return (f"{ev.get('ts', '?')} kiosk={kiosk} frame={ev.get('frame_index', '?')} "
            f"item={best.get('item_id', '?')} name={best.get('name', '?')} score={score_txt} "
            f"event_id={ev.get('event_id')}")


def parse_broker(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """mqtt://[user[:password]@]host[:port] or mqtts://... -> host, port, tls, user, password."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise SystemExit(f"subscriber: --broker {url!r}: expected mqtt://host:port or mqtts://host:port")
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, user, password


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Print kiosk match events, each event once.")
    ap.add_argument("--broker", default=os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883"),
                    help="mqtt://host:port or mqtts://host:port (default: $MQTT_URL or localhost)")
    ap.add_argument("--topic", default=DEFAULT_TOPIC, help=f"topic filter (default {DEFAULT_TOPIC})")
    ap.add_argument("--share", metavar="GROUP",
                    help="MQTT 5 shared subscription: subscribe to $share/GROUP/TOPIC")
    ap.add_argument("--username", default=os.environ.get("MQTT_USERNAME"))
    ap.add_argument("--password", default=None,
                    help="password (better: the MQTT_PASSWORD environment variable)")
    ap.add_argument("--cafile", help="CA certificate for mqtts://")
    ap.add_argument("--client-id", default="", help="client id (needed for a persistent session)")
    ap.add_argument("--session-expiry", type=int, default=0, metavar="S",
                    help="keep the session (and queued QoS 1 events) S seconds after a disconnect")
    ap.add_argument("--count", type=int, default=0, help="exit after N distinct events (0: never)")
    ap.add_argument("--timeout", type=float, default=0.0, help="exit after S seconds (0: never)")
    ap.add_argument("--json", action="store_true", help="print each event as one JSON line")
    ap.add_argument("--jsonl", metavar="FILE", help="also append each distinct event to FILE")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host, port, tls, url_user, url_password = parse_broker(args.broker)
    username = args.username or url_user
    password = args.password or os.environ.get("MQTT_PASSWORD") or url_password
    topic = f"$share/{args.share}/{args.topic}" if args.share else args.topic

    dedup = Deduplicator()
    done = threading.Event()
    lock = threading.Lock()
    stats = {"received": 0, "distinct": 0, "duplicates": 0, "bad": 0}
    out = open(args.jsonl, "a", encoding="utf-8") if args.jsonl else None  # noqa: SIM115

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=args.cafile)
    client.reconnect_delay_set(1, 30)

    # paho callbacks must never raise: an exception would end the network thread.
    def on_connect(c, userdata, flags, reason, props=None):
        if reason.is_failure:
            print(f"subscriber: connect refused: {reason}", file=sys.stderr, flush=True)
            return
        c.subscribe(topic, qos=1)

    def on_subscribe(c, userdata, mid, reasons, props=None):
        bad = [r for r in reasons if r.is_failure]
        if bad:
            print(f"subscriber: subscribe to {topic} refused: {bad[0]}", file=sys.stderr, flush=True)
        else:
            print(f"subscriber: subscribed to {topic} on {host}:{port}", file=sys.stderr, flush=True)

    def on_message(c, userdata, msg):
        try:
            ev = json.loads(msg.payload)
            event_id = ev["event_id"] if isinstance(ev, dict) else None
            if not isinstance(event_id, str) or not event_id:
                raise ValueError("no event_id")
        except (ValueError, KeyError, TypeError) as exc:
            with lock:
                stats["bad"] += 1
            print(f"subscriber: ignoring a malformed message on {msg.topic}: {exc}",
                  file=sys.stderr, flush=True)
            return
        try:
            with lock:
                stats["received"] += 1
                if not dedup.first_time(event_id):
                    stats["duplicates"] += 1
                    return
                stats["distinct"] += 1
                line = json.dumps(ev, sort_keys=True) if args.json else format_event(msg.topic, ev)
                print(line, flush=True)
                if out is not None:
                    out.write(json.dumps(ev, sort_keys=True) + "\n")
                    out.flush()
                if args.count and stats["distinct"] >= args.count:
                    done.set()
        except Exception as exc:  # noqa: BLE001 - keep the network thread alive
            print(f"subscriber: error handling a message: {exc}", file=sys.stderr, flush=True)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())

    props = None
    if args.session_expiry:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = args.session_expiry
    try:
        client.connect(host, port, keepalive=30, clean_start=not args.session_expiry,
                       properties=props)
    except OSError as exc:
        print(f"subscriber: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 2
    client.loop_start()
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while not done.is_set():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        done.wait(0.5 if left is None else min(left, 0.5))
    client.disconnect()
    client.loop_stop()
    if out is not None:
        out.close()
    print(f"subscriber: {stats['distinct']} distinct events, {stats['duplicates']} duplicates "
          f"dropped, {stats['bad']} malformed", file=sys.stderr, flush=True)
    # With --count, a timeout before N events is a failure (scripts and tests rely on it).
    return 1 if args.count and stats["distinct"] < args.count else 0


if __name__ == "__main__":
    raise SystemExit(main())
