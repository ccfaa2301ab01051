"""Runtime statistics (fps, latency percentiles, drops) and an optional
Prometheus text endpoint served by the standard library (no extra dependency),
on the loopback interface unless configured otherwise."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["RuntimeStats", "percentile", "MetricsServer", "prometheus_text"]

log = logging.getLogger(__name__)


def percentile(values: Any, q: float) -> float | None:
    arr = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else None


class RuntimeStats:
    """Counters and a sliding window of per-frame latencies (thread-safe)."""

    def __init__(self, window: int = 2000, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._latency_ms: deque[float] = deque(maxlen=window)      # capture -> decision, every frame
        self._event_latency_ms: deque[float] = deque(maxlen=window)  # capture -> publish, events
        self._frame_times: deque[float] = deque(maxlen=window)
        self.frames = 0
        self.events = 0
        self.unknowns = 0   # presentations that named no catalogue item
        self.started = clock()

    def frame(self, latency_ms: float) -> None:
        with self._lock:
            self.frames += 1
            self._latency_ms.append(latency_ms)
            self._frame_times.append(self.clock())

    def event(self, latency_ms: float) -> None:
        with self._lock:
            self.events += 1
            self._event_latency_ms.append(latency_ms)

    def unknown(self) -> None:
        with self._lock:
            self.unknowns += 1

    def fps(self) -> float:
        with self._lock:
            times = list(self._frame_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def latencies(self) -> list[float]:
        with self._lock:
            return list(self._latency_ms)

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        with self._lock:
            lat = list(self._latency_ms)
            ev = list(self._event_latency_ms)
            frames, events, unknowns = self.frames, self.events, self.unknowns

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {"fps": round(self.fps(), 2), "frames": frames, "events": events,
                "unknown_presentations": unknowns,
                "latency_ms_p50": r(percentile(lat, 50)), "latency_ms_p99": r(percentile(lat, 99)),
                "event_latency_ms_p50": r(percentile(ev, 50)),
                "event_latency_ms_p99": r(percentile(ev, 99)),
                "uptime_s": round(self.clock() - self.started, 1), **extra}


def prometheus_text(snapshot: dict[str, Any], kiosk_id: str) -> str:
    """Numeric fields of a metrics snapshot in the Prometheus exposition format."""
    lines = []
    for key, value in snapshot.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = f"kiosk_{key}"
        lines.append(f"# TYPE {name} gauge")
        lines.append(f'{name}{{kiosk_id="{kiosk_id}"}} {value}')
    return "\n".join(lines) + "\n"


class MetricsServer:
    """GET /metrics -> prometheus_text(snapshot_fn()). Runs in a daemon thread."""

    def __init__(self, host: str, port: int, snapshot_fn: Callable[[], dict[str, Any]],
                 kiosk_id: str) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = prometheus_text(outer.snapshot_fn(), outer.kiosk_id).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.snapshot_fn = snapshot_fn
        self.kiosk_id = kiosk_id
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http",
                                        daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("Prometheus metrics on http://%s:%d/metrics", self.httpd.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
