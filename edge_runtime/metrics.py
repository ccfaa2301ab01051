"""Runtime statistics (fps, latency percentiles, drops) and their Prometheus
exposition through prometheus_client: on the page's server when ``[web]`` is
on (web.py), else on a port of its own, loopback unless configured otherwise."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["RuntimeStats", "percentile", "MetricsServer", "SnapshotCollector",
           "metrics_registry"]

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


class SnapshotCollector:
    """A prometheus_client collector: every numeric field of a metrics snapshot
    (the one published on ``kiosk/{id}/metrics``) as a gauge ``kiosk_<field>``
    labelled with the kiosk id, read when scraped."""

    def __init__(self, snapshot_fn: Callable[[], dict[str, Any]], kiosk_id: str) -> None:
        self.snapshot_fn = snapshot_fn
        self.kiosk_id = kiosk_id

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        for key, value in self.snapshot_fn().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            g = GaugeMetricFamily(f"kiosk_{key}", f"kiosk metrics field {key}",
                                  labels=["kiosk_id"])
            g.add_metric([self.kiosk_id], float(value))
            yield g


def metrics_registry(snapshot_fn: Callable[[], dict[str, Any]], kiosk_id: str) -> Any:
    """A registry of its own (not the process-global one) holding the kiosk's gauges."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot_fn, kiosk_id))
    return registry


class MetricsServer:
    """GET /metrics on its own port (``[metrics] prometheus`` without ``[web]``):
    prometheus_client's WSGI app on a threading wsgiref server, in a daemon thread."""

    def __init__(self, host: str, port: int, snapshot_fn: Callable[[], dict[str, Any]],
                 kiosk_id: str) -> None:
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        app = make_wsgi_app(metrics_registry(snapshot_fn, kiosk_id))

        def only_metrics(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found\n"]
            return app(environ, start_response)

        self.httpd = make_server(host, port, only_metrics, server_class=Server, handler_class=Quiet)
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
