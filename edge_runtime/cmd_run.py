"""`edge-runtime run`: the kiosk service (camera -> encoder -> index -> MQTT).

    edge-runtime run                              # the shipped sample, broker on localhost
    edge-runtime run --config /etc/kiosk/kiosk.toml
    edge-runtime run --config kiosk.toml --source rtsp://cam/stream --broker mqtt://broker:1883
    edge-runtime run --config kiosk.toml --validate-config

Flags override the file. SIGTERM/SIGINT stop the capture, flush the MQTT
outbox within ``mqtt.flush_timeout_s``, publish the offline status and exit 0;
so does the end of a file source (unless ``--loop``). Exit status 3: stopped
with messages undelivered (kept in the outbox for the next start, or lost
with ``mqtt.outbox = "memory"``); 1: the source failed.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import edge_runtime
from edge_runtime.config import (
    KioskConfig,
    apply_overrides,
    load_config,
    parse_broker_url,
    parse_web_bind,
)
from edge_runtime.events import METRICS_SCHEMA, bundle_status, utc_iso
from edge_runtime.sdnotify import Notifier
from models.errors import ConfigError

__all__ = ["add_arguments", "run", "build_config", "build_presenter", "Kiosk", "sample_dir"]

log = logging.getLogger(__name__)

STALL_S = 20.0   # no frame for this long while "streaming" = a hung capture: starve the watchdog


def sample_dir() -> Path:
    return Path(edge_runtime.__file__).resolve().parents[1] / "sample"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="kiosk.toml (see deploy/kiosk.example.toml)")
    p.add_argument("--source", help="/dev/video0, 0, rtsp://..., a GStreamer pipeline, a file or folder")
    p.add_argument("--bundle", type=Path, help="bundle folder or bundle store")
    p.add_argument("--broker", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--kiosk-id")
    p.add_argument("--camera-id")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"])
    p.add_argument("--realtime", action="store_true", default=None,
                   help="pace a file at its frame rate (keep newest frame)")
    p.add_argument("--loop", action="store_true", default=None, help="replay a file forever")
    p.add_argument("--preview", type=Path, help="write an annotated video (out.mp4)")
    p.add_argument("--outbox", help='where unacknowledged events are kept: a SQLite file, or '
                   '"memory" (default: outbox-KIOSK_ID.sqlite in the state directory)')
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--web", metavar="HOST:PORT", help="serve the set-up page (live view, events, "
                   "status) here, e.g. 127.0.0.1:8080; another address than loopback needs "
                   "KIOSK_WEB_TOKEN")
    p.add_argument("--validate-config", action="store_true", help="check the config and exit")


def build_config(args: argparse.Namespace) -> KioskConfig:
    """The config file (or defaults), the shipped sample when nothing names a
    source/bundle, then the flags on top."""
    cfg = load_config(args.config)
    over: dict[str, Any] = {}
    if args.config is None and (args.source is None or args.bundle is None):
        sample = sample_dir()
        if not (sample / "clip.mp4").is_file() or not (sample / "bundle").is_dir():
            raise ConfigError(f"no --config given and the shipped sample is missing "
                              f"({sample}/clip.mp4, {sample}/bundle); pass --config, or "
                              "--source and --bundle")
        if (sample / "kiosk.toml").is_file():   # the sample's own settings (its ROI)
            cfg = load_config(sample / "kiosk.toml")
        over["source.uri"] = str(sample / "clip.mp4")
        over["bundle.path"] = sample / "bundle"
        over["kiosk.id"] = "sample"
    flags = {"source.uri": args.source, "bundle.path": args.bundle, "kiosk.id": args.kiosk_id,
             "kiosk.camera_id": args.camera_id, "backend.kind": args.backend,
             "source.realtime": args.realtime, "source.loop": args.loop,
             "preview.path": args.preview, "max_frames": args.max_frames,
             "logging.format": args.log_format, "mqtt.outbox": args.outbox}
    over.update({k: v for k, v in flags.items() if v is not None})
    if getattr(args, "web", None):
        host, port = parse_web_bind(args.web)
        over.update({"web.enabled": True, "web.host": host, "web.port": port})
    if args.broker:
        host, port, tls = parse_broker_url(args.broker)
        over.update({"mqtt.host": host, "mqtt.port": port, "mqtt.tls": tls or cfg.mqtt.tls})
    return apply_overrides(cfg, over)


def build_presenter(cfg: KioskConfig) -> Any:
    """The scene model, framing and presentation tracker of ``cfg`` (None with
    ``[presence] mode = "off"``). The threshold is the bundle's unless set;
    the pipeline binds it when it starts and at every bundle swap."""
    if cfg.presence.mode == "off":
        return None
    import cv2

    from edge_runtime.presence import SceneModel
    from edge_runtime.presentation import PresentationParams
    from edge_runtime.presenter import Presenter

    # OpenCV's own thread pool costs more than it gives on frames this small,
    # and fights the encoder's threads for the cores (measured 7.8 ms against
    # 0.5 ms for one 640x480 -> 160x120 resize on a busy 2-core machine).
    cv2.setNumThreads(1)
    d = cfg.decision
    params = PresentationParams(
        lead=d.lead, min_views=d.min_views, max_views=d.max_views, leave_lead=d.leave_lead,
        stable_shift=d.stable_shift, sharp_ratio=d.sharp_ratio, swap_frames=d.swap_frames,
        swap_corr=d.swap_corr, steady_corr=d.steady_corr, cooldown_s=d.cooldown_s)
    return Presenter(SceneModel(cfg.presence.params()), params, tuple(cfg.crop.margins),
                     top_k=d.top_k, keep_views=cfg.snapshot.enabled or cfg.web.enabled)


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    cfg.web.check()
    if args.validate_config:
        from edge_runtime.sources import describe_source

        describe_source(cfg.source.uri)
        print(f"config ok: kiosk {cfg.kiosk.id}, source {cfg.source.uri}, bundle {cfg.bundle.path}, "
              f"broker {cfg.mqtt.host}:{cfg.mqtt.port}")
        return 0
    from edge_runtime.logs import setup_logging

    setup_logging(cfg.logging.format, "DEBUG" if getattr(args, "verbose", False) else cfg.logging.level)
    kiosk = Kiosk(cfg)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    reason = kiosk.run(stop)
    return 1 if reason == "source failed" else 3 if kiosk.undelivered else 0


class Kiosk:
    """Everything `run` wires together; ``run(stop)`` returns when the source
    ends, ``stop`` is set or max_frames is reached, after a clean shutdown."""

    def __init__(self, cfg: KioskConfig, source: Any = None) -> None:
        self.cfg = cfg
        self.source = source   # an injected FrameSource (tests); default: from cfg.source
        self.pipeline: Any = None
        self.mqtt: Any = None
        self.web: Any = None   # the page's server once serving (web.WebServer), with [web]
        self.undelivered = 0   # messages left in the outbox at stop

    def _bundle_dir(self) -> tuple[Path, Any]:
        cfg = self.cfg
        if cfg.update.enabled:
            from edge_runtime.update.store import BundleStore, is_store

            store = BundleStore(cfg.update.store_dir, keep=cfg.update.keep)
            if not is_store(cfg.update.store_dir):
                store.init_from(cfg.bundle.path)
            return store.recover(), store
        try:
            from edge_runtime.update.store import resolve_bundle
        except ImportError:
            return Path(cfg.bundle.path), None
        return resolve_bundle(cfg.bundle.path), None

    def open_matcher(self, bundle_dir: Path, verified: Any = None) -> Any:
        """Open (verify, load, warm) a bundle with the configured backend;
        ``verified``: what the updater's verifier process already checked."""
        from edge_runtime.encoders.select import open_encoder
        from edge_runtime.matcher import Matcher
        from edge_runtime.overlay import find_overlay
        from models.bundle import read_manifest

        b = self.cfg.backend
        encoder = open_encoder(bundle_dir, read_manifest(bundle_dir), b.kind, threads=b.threads,
                               max_batch=b.max_batch)
        try:
            return Matcher.open(bundle_dir, encoder=encoder, threshold=self.cfg.decision.threshold,
                                verified=verified, overlay_dir=find_overlay(bundle_dir))
        except BaseException:
            encoder.close()
            raise

    def run(self, stop: threading.Event) -> str:
        from edge_runtime.decision import Decider, DecisionParams
        from edge_runtime.metrics import MetricsServer, RuntimeStats
        from edge_runtime.mqtt import KioskMqtt
        from edge_runtime.outbox import open_outbox
        from edge_runtime.pipeline import Pipeline, PipelineOptions
        from edge_runtime.sources import open_source

        cfg = self.cfg
        cfg.web.check()
        # A bad source fails before anything else starts.
        source = self.source if self.source is not None else open_source(cfg.source)
        bundle_dir, store = self._bundle_dir()
        matcher = self.open_matcher(bundle_dir)
        if cfg.bundle.self_test:
            for failure in matcher.self_test():
                log.warning("bundle self-test: %s", failure)
        m = matcher.manifest
        roi = (cfg.roi.x, cfg.roi.y, cfg.roi.w, cfg.roi.h) if cfg.roi.enabled else None
        try:
            outbox = open_outbox(cfg.mqtt.outbox, cfg.kiosk.id, max_messages=cfg.mqtt.queue_max,
                                 max_bytes=cfg.mqtt.queue_max_bytes, sync=cfg.mqtt.outbox_sync)
        except BaseException:
            matcher.close()
            raise
        mqtt = KioskMqtt(cfg.mqtt, cfg.kiosk.id, outbox=outbox, status={
            "camera_id": cfg.kiosk.camera_id, "runtime_version": edge_runtime.__version__,
            **bundle_status(matcher), "source": source.name, "source_state": source.state,
            "started": utc_iso()})
        stats = RuntimeStats()
        notifier = Notifier()
        preview = None
        if cfg.preview.path is not None:
            from edge_runtime.preview import PreviewWriter

            preview = PreviewWriter(cfg.preview.path, cfg.preview.fps, roi)
        d = cfg.decision
        params = DecisionParams(threshold=matcher.threshold, margin=d.margin, window=d.window,
                                min_frames=d.min_frames, cooldown_s=d.cooldown_s)
        snap = cfg.snapshot
        hub = None
        if cfg.web.enabled:
            from edge_runtime.web_hub import LiveHub

            hub = LiveHub(max_fps=cfg.web.stream_fps, keep_events=cfg.web.events, roi=roi,
                          snapshot_side=max(snap.max_side, 224))
        pipeline = Pipeline(source, matcher, Decider(params), mqtt, PipelineOptions(
            kiosk_id=cfg.kiosk.id, camera_id=cfg.kiosk.camera_id, top_k=d.top_k,
            max_batch=cfg.backend.max_batch, roi=roi, aggregate=d.aggregate, threshold=d.threshold,
            snapshot_max_bytes=snap.max_bytes if snap.enabled else 0,
            snapshot_max_side=snap.max_side),
            stats=stats, preview=preview, heartbeat=self._watchdog(notifier, source),
            presenter=build_presenter(cfg), live=hub)

        def snapshot() -> dict[str, Any]:
            return stats.snapshot(schema=METRICS_SCHEMA, kiosk_id=cfg.kiosk.id, ts=utc_iso(),
                                  dropped_frames=source.dropped, queue_depth=mqtt.queue_depth,
                                  mqtt_dropped=mqtt.dropped, source_state=source.state,
                                  source_reconnects=source.reconnects,
                                  bundle_version=pipeline.current_matcher.manifest.bundle_version)

        self.pipeline, self.mqtt = pipeline, mqtt
        updater = server = None
        try:   # everything that can refuse to start does so before anything runs
            if cfg.update.enabled:
                from edge_runtime.update.updater import Updater

                updater = Updater(store, mqtt, pipeline, cfg.update, edge_runtime.__version__,
                                  open_matcher=self.open_matcher)
            if cfg.web.enabled:
                server = self._web_server(hub, pipeline, mqtt, snapshot)
            elif cfg.metrics.prometheus:
                try:
                    server = MetricsServer(cfg.metrics.host, cfg.metrics.port, snapshot,
                                           cfg.kiosk.id)
                except OSError as exc:
                    raise ConfigError(f"metrics.port: cannot serve on {cfg.metrics.host}:"
                                      f"{cfg.metrics.port} ({exc.strerror})") from None
        except BaseException:
            matcher.close()
            outbox.close()
            raise
        mqtt.start(wait_s=5.0)
        if updater is not None:
            updater.start()
        if server is not None:
            server.start()
            self.web = server if cfg.web.enabled else None   # it logs its address
        done = threading.Event()
        reporter = threading.Thread(target=self._report,
                                    args=(mqtt, source, snapshot, done, notifier),
                                    name="metrics", daemon=True)
        gc.freeze()   # what lives now lives for the run: out of the way of full collections
        source.start()
        reporter.start()
        log.info("kiosk %s running: source %s, bundle v%d (%s), backend %s", cfg.kiosk.id,
                 source.name, m.bundle_version, bundle_dir, matcher.encoder.name)
        reason = "error"
        try:
            reason = pipeline.run(stop, cfg.max_frames)
            if reason == "ended" and source.state == "failed":
                reason = "source failed"
        finally:
            notifier.stopping()
            source.stop()
            done.set()
            reporter.join(2.0)
            if server is not None and cfg.web.enabled:
                server.stop()
            if updater is not None:
                updater.stop()
            mqtt.publish_json("metrics", snapshot(), qos=1)
            mqtt.set_status(source_state=source.state)
            flushed = mqtt.stop(cfg.mqtt.flush_timeout_s, reason=reason)
            self.undelivered = mqtt.undelivered
            if server is not None and not cfg.web.enabled:
                server.stop()
            if preview is not None:
                preview.close()
            pipeline.current_matcher.close()
            log.info("stopped (%s): %d frames, %d events, %s", reason, stats.frames, stats.events,
                     "all messages delivered" if flushed else "some messages NOT delivered")
        return reason

    def _web_server(self, hub: Any, pipeline: Any, mqtt: Any, snapshot: Any) -> Any:
        """The page's server (bound now: a taken port refuses the start), with
        /metrics on it when ``[metrics] prometheus`` is on."""
        from edge_runtime.metrics import metrics_registry
        from edge_runtime.web import WebContext, WebServer, create_app

        cfg = self.cfg

        def status() -> dict[str, Any]:
            return {**mqtt.status, "kiosk_id": cfg.kiosk.id, "mqtt_connected": mqtt.connected,
                    "presence": cfg.presence.mode, "metrics": snapshot()}

        registry = metrics_registry(snapshot, cfg.kiosk.id) if cfg.metrics.prometheus else None
        ctx = WebContext(hub, status=status, relearn=pipeline.request_relearn, registry=registry,
                         token=cfg.web.token())
        return WebServer(cfg.web.host, cfg.web.port, create_app(ctx), hub)

    def _watchdog(self, notifier: Any, source: Any) -> Any:
        """The frame loop's heartbeat: READY=1 at the first frame, then WATCHDOG=1
        while frames arrive or the source is visibly reconnecting. A capture
        that claims to stream but delivers nothing for ``STALL_S`` (a hung
        driver) stops the pings, and systemd restarts the kiosk."""
        last = [time.monotonic()]
        ready = [False]

        def beat(got_frame: bool) -> None:
            now = time.monotonic()
            if got_frame:
                last[0] = now
                if not ready[0]:
                    ready[0] = True
                    notifier.ready(f"kiosk {self.cfg.kiosk.id}: streaming")
            if got_frame or source.state != "streaming" or now - last[0] < STALL_S:
                notifier.watchdog()
        return beat

    def _report(self, mqtt: Any, source: Any, snapshot: Any, done: threading.Event,
                notifier: Any) -> None:
        """Publish metrics every interval and the source state when it changes."""
        interval = self.cfg.mqtt.metrics_interval_s
        next_metrics = time.monotonic() + interval
        state = None   # publish the first state seen, whatever it is by now
        while not done.wait(0.25):
            try:
                if source.state != state:
                    state = source.state
                    mqtt.set_status(source_state=state)
                    notifier.status(f"source {state}")
                if time.monotonic() >= next_metrics:
                    next_metrics += interval
                    mqtt.publish_json("metrics", snapshot(), qos=0)
            except Exception:
                log.exception("metrics reporter error")
