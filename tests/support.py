"""Real components for tests: a Mosquitto broker on a free loopback port,
synthetic product photos that an encoder can tell apart, MQTT helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["free_port", "find_mosquitto", "Broker", "make_product_photos", "Collector",
           "poll_until"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_until(pred, timeout: float = 10.0, every: float = 0.02) -> bool:
    """True as soon as ``pred()`` is, False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


class Broker:
    """A real Mosquitto process on 127.0.0.1:port. ``extra_conf`` lines are
    appended to a minimal config (listener + allow_anonymous unless given)."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "",
                 anonymous: bool = True) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise RuntimeError("mosquitto is not installed")
        self.exe = exe
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "persistence false"]
        if anonymous and "allow_anonymous" not in extra_conf:
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join(lines) + "\n" + extra_conf + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Collector:
    """A paho subscriber that records (topic, payload, retain) on a real broker."""

    def __init__(self, port: int, topics: list[str], *, username: str | None = None,
                 password: str | None = None, client_id: str | None = None,
                 persistent_session: bool = False) -> None:
        """``persistent_session``: MQTT 3.1.1 with clean_session False under a
        fixed ``client_id``, so with broker persistence on, QoS 1 messages
        published while it is away are kept for it."""
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        if persistent_session:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                      clean_session=False, protocol=mqtt.MQTTv311)
            self.client.reconnect_delay_set(1, 1)
        else:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                      protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self._topics = topics
        self._subscribed = threading.Event()

        def on_connect(client, userdata, flags, rc, props=None):
            if not rc.is_failure:
                client.subscribe([(t, 1) for t in topics])

        def on_subscribe(client, userdata, mid, rcs, props=None):
            self._subscribed.set()

        def on_message(client, userdata, msg):
            with self._cond:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("collector did not subscribe")

    def wait_for(self, predicate, timeout: float = 10.0) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)

    def on(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def make_product_photos(root: Path, n_items: int = 4, per_item: int = 3, size: int = 120,
                        seed: int = 0) -> Path:
    """Write a small catalogue tree of synthetic 'products': each item a
    distinct colour pattern (stripes/blobs), each photo a jittered view.
    Real JPEG files, decoded by OpenCV like any photo."""
    import cv2

    rng = np.random.default_rng(seed)
    for i in range(n_items):
        base = rng.integers(0, 255, size=3)
        accent = 255 - base
        folder = root / f"Group{i % 2}" / f"Item-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        freq = 2 + i
        for j in range(per_item):
            img = np.full((size, size, 3), base, dtype=np.uint8)
            shift = int(rng.integers(0, 8))
            for k in range(freq):
                x0 = (k * size // freq + shift) % size
                cv2.rectangle(img, (x0, 0), (x0 + size // (2 * freq), size), accent.tolist(), -1)
            cx, cy = (int(v) for v in rng.integers(size // 3, 2 * size // 3, size=2))
            cv2.circle(img, (cx, cy), size // 6 + i * 2, ((base * 3) % 255).tolist(), -1)
            noise = rng.normal(0, 6, img.shape)
            img = np.clip(img + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"photo_{j:02d}.jpg"), img)
    return root
