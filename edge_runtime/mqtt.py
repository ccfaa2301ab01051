"""The kiosk's MQTT link (paho-mqtt 2.x, callback API 2, MQTT 5 or 3.1.1).

Topics (docs/asyncapi.yaml): ``kiosk/{id}/match`` events (QoS 1),
``kiosk/{id}/status`` retained JSON with a retained last will saying
``online: false``, ``kiosk/{id}/metrics``, and ``kiosk/{id}/cmd/{name}``
commands in.

Delivery: ``publish_json`` only appends to a bounded queue of our own (oldest
dropped and counted when full); ONE publishing thread hands messages to paho
one at a time while connected and waits for the PUBACK before the next, so
the queue - not paho's unbounded in-memory one - absorbs a broker outage.
A message handed over just before a disconnect is resent by paho after the
reconnect (same payload, so a duplicate carries the same event_id). QoS 0
messages (metrics) are not queued while disconnected: they would be stale.
paho's loop thread reconnects with ``reconnect_delay_set`` backoff;
subscriptions are made in on_connect so they survive reconnects; no exception
escapes a callback (one would end paho's network thread); every wait has a
timeout. Credentials come from the config or KIOSK_MQTT_USERNAME /
KIOSK_MQTT_PASSWORD and are never logged.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_runtime.config import MqttConfig
from edge_runtime.events import STATUS_SCHEMA, utc_iso

__all__ = ["KioskMqtt"]

log = logging.getLogger(__name__)


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
                 client_factory: Callable[..., Any] | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.cfg = cfg
        self.kiosk_id = kiosk_id
        self.prefix = f"kiosk/{kiosk_id}"
        self.dropped = 0          # messages dropped because the offline queue was full
        self.published = 0        # messages acknowledged by the broker
        self.connects = 0
        self._status: dict[str, Any] = {"schema": STATUS_SCHEMA, "kiosk_id": kiosk_id,
                                        "online": True, **(status or {})}
        self._status_dirty = False
        self._queue: deque[_Msg] = deque()
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
        c.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
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
        with self._cond:
            return len(self._queue)

    def start(self, wait_s: float = 0.0) -> bool:
        """Connect in the background; optionally wait up to ``wait_s`` for the first CONNACK."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.cfg.session_expiry_s)
        log.info("MQTT connecting to %s:%d (MQTT %s%s)", self.cfg.host, self.cfg.port,
                 self.cfg.protocol, ", TLS" if self.cfg.tls or self.cfg.ca_file else "")
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                                   properties=props)
        self._client.loop_start()
        self._thread.start()
        return self._connected.wait(wait_s) if wait_s > 0 else self.connected

    def publish_json(self, subtopic: str, payload: dict[str, Any], qos: int = 1,
                     retain: bool = False) -> None:
        """Queue a JSON message for kiosk/{id}/{subtopic}; never blocks."""
        msg = _Msg(self.topic(subtopic), json.dumps(payload, separators=(",", ":")).encode(),
                   qos, retain)
        with self._cond:
            if qos == 0 and not self.connected:
                return
            if len(self._queue) >= self.cfg.queue_max:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(msg)
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
        with self._cond:
            while (self._queue or self._status_dirty or self._busy) and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            flushed = not (self._queue or self._status_dirty or self._busy)
            left = len(self._queue)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(2.0)
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        if not flushed:
            log.warning("MQTT stopped with %d message(s) undelivered", left)
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
        log.info("MQTT connected (session present: %s)", getattr(flags, "session_present", None))
        if self._handlers:
            client.subscribe([(t, 1) for t in self._handlers])
        with self._cond:
            self._status_dirty = True   # a restarted broker may have lost the retained status
            self._connected.set()
            self._cond.notify_all()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        if not self._fail_logged:   # once per outage, not at every backoff step
            self._fail_logged = True
            log.warning("MQTT broker %s:%d unreachable; retrying with backoff, messages are "
                        "queued (up to %d)", self.cfg.host, self.cfg.port, self.cfg.queue_max)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any = None) -> None:
        self._connected.clear()
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

    def _next(self) -> _Msg | None:
        """Wait (bounded) for something to send while connected; called with the lock held."""
        while not self._stop.is_set():
            if self.connected and (self._status_dirty or self._queue):
                if self._status_dirty:
                    self._status_dirty = False
                    return _Msg(self.topic("status"), self._status_bytes(), 1, True)
                return self._queue[0]
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
            from_queue = bool(self._queue) and self._queue[0] is msg
            self._busy = True
        try:
            try:
                info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            except (ValueError, TypeError) as exc:   # a message paho refuses: never retry it
                log.error("MQTT message to %s dropped: %s", msg.topic, exc)
                with self._cond:
                    if from_queue and self._queue and self._queue[0] is msg:
                        self._queue.popleft()
                return
            with self._cond:
                if from_queue and self._queue and self._queue[0] is msg:
                    self._queue.popleft()   # paho owns it now and resends it after a reconnect
                # Wait for the PUBACK (QoS 1; paho resends it across reconnects) or, for
                # QoS 0, for paho to have written it (bounded: it is lost on a disconnect).
                give_up = time.monotonic() + 5.0 if msg.qos == 0 else float("inf")
                while (info.mid not in self._acked and not self._stop.is_set()
                       and time.monotonic() < give_up):
                    self._cond.wait(0.2)
                if info.mid in self._acked:
                    self._acked.discard(info.mid)
                    self.published += 1
                if len(self._acked) > 1000:  # stale ids (e.g. a QoS 0 ack after we gave up)
                    self._acked.clear()
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
