"""The kiosk's MQTT link (paho-mqtt 2.x, callback API 2, MQTT 5 or 3.1.1).

Topics (docs/asyncapi.yaml): ``kiosk/{id}/match`` events (QoS 1),
``kiosk/{id}/status`` retained JSON with a retained last will saying
``online: false``, ``kiosk/{id}/metrics``, and ``kiosk/{id}/cmd/{name}``
commands in.

Delivery: ``publish_json`` writes a QoS 1 message to the outbox
(edge_runtime/outbox.py: SQLite on disk for the kiosk service, memory by
default) before it returns; ONE publishing thread hands the oldest message
to paho while connected, waits for its PUBACK, and only then removes it from
the outbox. So a broker or WAN outage fills the bounded outbox, not paho's
unbounded in-memory queue, and a crash or restart loses nothing the outbox
held: it is sent again at the next start, byte for byte (a duplicate carries
the same event_id). QoS 0 messages (metrics) are not kept while
disconnected: they would be stale. ``stop`` says how many messages were left
undelivered (``undelivered``; they stay in a durable outbox).

paho's loop thread reconnects; the delay is ours: exponential from
``reconnect_min_s``, capped at ``reconnect_max_s`` (a few seconds), half of
it random, so a fleet does not reconnect in lockstep after an outage and no
kiosk stays away long once the broker is back. Subscriptions are made in
on_connect so they survive reconnects; no exception escapes a callback (one
would end paho's network thread); every wait has a timeout. Under MQTT 5 the
kiosk tells the broker the largest packet it accepts (``MAX_INCOMING``), so
an oversize command is dropped by the broker. Credentials come from the
config or KIOSK_MQTT_USERNAME / KIOSK_MQTT_PASSWORD and are never logged.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_runtime.config import MqttConfig
from edge_runtime.events import STATUS_SCHEMA, utc_iso
from edge_runtime.outbox import MemoryOutbox, Outbox, OutMsg

__all__ = ["KioskMqtt", "backoff_s", "MAX_INCOMING"]

log = logging.getLogger(__name__)

MAX_INCOMING = 1 << 16      # bytes: commands are at most 8 KiB
VOLATILE_MAX = 100          # QoS 0 messages waiting while connected


def backoff_s(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Delay before reconnect ``attempt`` (0 = the first): lo * 2^attempt,
    capped at ``hi``, of which a random half ("equal jitter")."""
    d = min(hi, lo * 2 ** min(attempt, 30))
    return d / 2 + rng.uniform(0, d / 2)


@dataclass
class _Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    """Wrap a paho callback: log and swallow anything it raises."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("MQTT callback %s failed", fn.__name__)

    return wrapper


class KioskMqtt:
    """See module docstring. ``status`` seeds the retained status fields."""

    def __init__(self, cfg: MqttConfig, kiosk_id: str, *, status: dict[str, Any] | None = None,
                 outbox: Outbox | None = None,
                 client_factory: Callable[..., Any] | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.cfg = cfg
        self.kiosk_id = kiosk_id
        self.prefix = f"kiosk/{kiosk_id}"
        self.outbox = outbox if outbox is not None else MemoryOutbox(cfg.queue_max,
                                                                     cfg.queue_max_bytes)
        self.published = 0        # messages acknowledged by the broker
        self.connects = 0
        self.undelivered = 0      # left in the outbox at stop
        self._status: dict[str, Any] = {"schema": STATUS_SCHEMA, "kiosk_id": kiosk_id,
                                        "online": True, "outbox": self.outbox.kind,
                                        **(status or {})}
        self._status_dirty = False
        self._volatile: deque[_Msg] = deque(maxlen=VOLATILE_MAX)
        self._rng = random.Random()
        self._attempt = 0
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._stop = threading.Event()
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._v5 = cfg.protocol == "5"
        factory = client_factory or mqtt.Client
        kwargs: dict[str, Any] = {} if self._v5 else {"clean_session": False}
        self._client = factory(mqtt.CallbackAPIVersion.VERSION2,
                               client_id=cfg.client_id or f"kiosk-{kiosk_id}",
                               protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311, **kwargs)
        c = self._client
        c.will_set(self.topic("status"), self._status_bytes(online=False, reason="connection lost"),
                   qos=1, retain=True)
        self._set_backoff()
        user, password = cfg.credentials()
        if user:
            c.username_pw_set(user, password)
        if cfg.tls or cfg.ca_file or cfg.cert_file:
            c.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                      certfile=str(cfg.cert_file) if cfg.cert_file else None,
                      keyfile=str(cfg.key_file) if cfg.key_file else None)
        c.on_connect = _safe(self._on_connect)
        c.on_disconnect = _safe(self._on_disconnect)
        c.on_publish = _safe(self._on_publish)
        c.on_message = _safe(self._on_message)
        c.on_connect_fail = _safe(self._on_connect_fail)
        self._fail_logged = False
        self._thread = threading.Thread(target=self._publisher, name="mqtt-publisher", daemon=True)

    # ------------------------------------------------------------ public API
    def topic(self, subtopic: str) -> str:
        return f"{self.prefix}/{subtopic}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def queue_depth(self) -> int:
        return len(self.outbox) + len(self._volatile)

    @property
    def dropped(self) -> int:
        """Messages dropped (oldest first) because the outbox was full, this run."""
        return self.outbox.dropped

    def start(self, wait_s: float = 0.0) -> bool:
        """Connect in the background; optionally wait up to ``wait_s`` for the first CONNACK."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.cfg.session_expiry_s)
            props.MaximumPacketSize = MAX_INCOMING
        log.info("MQTT connecting to %s:%d (MQTT %s%s)", self.cfg.host, self.cfg.port,
                 self.cfg.protocol, ", TLS" if self.cfg.tls or self.cfg.ca_file else "")
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                                   properties=props)
        self._client.loop_start()
        self._thread.start()
        return self._connected.wait(wait_s) if wait_s > 0 else self.connected

    def publish_json(self, subtopic: str, payload: dict[str, Any], qos: int = 1,
                     retain: bool = False) -> None:
        """Queue a JSON message for kiosk/{id}/{subtopic}. QoS 1: stored in
        the outbox before this returns (an fsync with a durable outbox, never
        a network wait); QoS 0 or retained: kept in memory while connected."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        if qos >= 1 and not retain:
            self.outbox.put(self.topic(subtopic), data, qos)
        elif not self.connected:
            return
        else:
            self._volatile.append(_Msg(self.topic(subtopic), data, qos, retain))
        with self._cond:
            self._cond.notify_all()

    def set_status(self, **fields: Any) -> None:
        """Merge ``fields`` into the retained status and republish it (latest wins)."""
        with self._cond:
            self._status.update(fields)
            self._status_dirty = True
            self._cond.notify_all()

    @property
    def status(self) -> dict[str, Any]:
        with self._cond:
            return dict(self._status)

    def add_command_handler(self, name: str, fn: Callable[[bytes], None]) -> None:
        """Call ``fn(payload)`` for kiosk/{id}/cmd/{name}; it runs on paho's thread: hand off only."""
        topic = self.topic(f"cmd/{name}")
        self._handlers[topic] = fn
        if self.connected:
            self._client.subscribe(topic, qos=1)

    def stop(self, timeout: float | None = None, reason: str = "shutdown") -> bool:
        """Publish the offline status, flush the queue for up to ``timeout`` s, disconnect.
        Returns True when everything queued was delivered."""
        timeout = self.cfg.flush_timeout_s if timeout is None else timeout
        self.set_status(online=False, reason=reason)
        self._closing.set()
        deadline = time.monotonic() + timeout

        def pending() -> bool:
            return bool(len(self.outbox) or self._volatile or self._status_dirty or self._busy)

        with self._cond:
            while pending() and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            flushed = not pending()
        left = self.undelivered = len(self.outbox)
        if left and self.connected:   # say so on the status topic too, if it can still be heard
            self.set_status(undelivered=left)
            with self._cond:
                end = time.monotonic() + 1.0
                while self._status_dirty and time.monotonic() < end:
                    self._cond.wait(0.1)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(2.0)
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        if left and self.outbox.kind == "memory":
            log.error("MQTT stopped with %d message(s) undelivered; they are lost "
                      "(mqtt.outbox = \"memory\")", left)
        elif left:
            log.warning("MQTT stopped with %d message(s) undelivered; kept in the outbox %s "
                        "for the next start", left, getattr(self.outbox, "path", ""))
        self.outbox.close()
        return flushed

    # ------------------------------------------------------------ internals
    _busy = False

    def _status_bytes(self, **extra: Any) -> bytes:
        body = {**self._status, **extra, "ts": utc_iso()}
        return json.dumps(body, separators=(",", ":")).encode()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any = None) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connection refused: %s", reason_code)
            return
        self.connects += 1
        self._fail_logged = False
        self._attempt = 0
        self._set_backoff()
        log.info("MQTT connected (session present: %s)", getattr(flags, "session_present", None))
        if self._handlers:
            client.subscribe([(t, 1) for t in self._handlers])
        with self._cond:
            self._status_dirty = True   # a restarted broker may have lost the retained status
            self._connected.set()
            self._cond.notify_all()

    def _set_backoff(self) -> None:
        """The next reconnect waits exactly this (paho starts from its minimum
        after every reconnect_delay_set)."""
        d = backoff_s(self._attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
        self._client.reconnect_delay_set(d, d)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._attempt += 1
        self._set_backoff()
        if not self._fail_logged:   # once per outage, not at every backoff step
            self._fail_logged = True
            log.warning("MQTT broker %s:%d unreachable; retrying every %g s at most, messages "
                        "are kept in the %s outbox (up to %d)", self.cfg.host, self.cfg.port,
                        self.cfg.reconnect_max_s, self.outbox.kind, self.cfg.queue_max)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any = None) -> None:
        self._connected.clear()
        self._set_backoff()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any = None,
                    properties: Any = None) -> None:
        if reason_code is not None and getattr(reason_code, "is_failure", False):
            log.warning("MQTT broker refused message %d: %s", mid, reason_code)
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        fn = self._handlers.get(msg.topic)
        if fn is not None:
            fn(bytes(msg.payload))

    def _next(self) -> _Msg | OutMsg | None:
        """Wait (bounded) for something to send while connected; called with
        the lock held. The status first, then QoS 0, then the outbox's oldest."""
        while not self._stop.is_set():
            if self.connected:
                if self._status_dirty:
                    self._status_dirty = False
                    return _Msg(self.topic("status"), self._status_bytes(), 1, True)
                if self._volatile:
                    return self._volatile.popleft()
                head = self.outbox.head()
                if head is not None:
                    return head
            self._cond.wait(0.5)
        return None

    def _publisher(self) -> None:
        while not self._stop.is_set():
            try:
                self._publish_one()
            except Exception:  # keep the only publishing thread alive
                log.exception("MQTT publisher error")
                self._stop.wait(0.5)

    def _publish_one(self) -> None:
        with self._cond:
            msg = self._next()
            if msg is None:
                return
            self._busy = True
        stored = isinstance(msg, OutMsg)
        retain = getattr(msg, "retain", False)
        if stored:
            self.outbox.sync()   # on disk before it leaves the kiosk
        try:
            try:
                info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=retain)
            except (ValueError, TypeError) as exc:   # a message paho refuses: never retry it
                log.error("MQTT message to %s dropped: %s", msg.topic, exc)
                if stored:
                    self.outbox.remove(msg.id)
                return
            with self._cond:
                # Wait for the PUBACK (QoS 1; paho resends it across reconnects) or, for
                # QoS 0, for paho to have written it (bounded: it is lost on a disconnect).
                give_up = time.monotonic() + 5.0 if msg.qos == 0 else float("inf")
                while (info.mid not in self._acked and not self._stop.is_set()
                       and time.monotonic() < give_up):
                    self._cond.wait(0.2)
                acked = info.mid in self._acked
                if acked:
                    self._acked.discard(info.mid)
                    self.published += 1
                if len(self._acked) > 1000:  # stale ids (e.g. a QoS 0 ack after we gave up)
                    self._acked.clear()
            if acked and stored:
                self.outbox.remove(msg.id)   # only now: the broker has it
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
