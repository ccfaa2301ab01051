"""Remote updates inside the running kiosk, without stopping the camera loop.

MQTT is the control plane (``kiosk/{id}/cmd/update``, ``cmd/rollback``),
HTTP(S) the data plane. The MQTT handlers only queue the raw payload; ONE
worker thread does everything else, in this order (TUF/Mender practice):

1. parse the command (size-capped, strict schema);
2. fetch the manifest bytes (capped) and verify the Ed25519 signature against
   the pinned keys BEFORE parsing them;
3. parse the manifest; refuse a release not newer than the active one, an
   expired or incompatible one;
4. download every artifact into a new staging folder on the store's
   filesystem (timeouts, size capped at the declared size, sha256 while
   streaming); build a TensorRT engine when the backend needs one;
5. commit the release (fsync, rename into releases/), open it (the bundle is
   verified again, the encoder and index loaded and warmed), run the
   self-test (probe images must retrieve their items);
6. switch ``current`` atomically, hot-swap the matcher between frames, then
   close the old one.

Progress and the result go to ``kiosk/{id}/update/status``; the retained
status carries ``bundle_version`` and ``last_update``. On any failure the
old bundle keeps serving and the reason is published. ``stage_release`` is
steps 2-4 alone (used by the crash test and the benchmark).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.update.commands import (
    DeviceInfo,
    check_manifest,
    engine_matches,
    loose_command_id,
    parse_rollback_command,
    parse_update_command,
    verified_manifest,
)
from edge_runtime.update.config import UpdateConfig
from edge_runtime.update.fetch import download_file, fetch_bytes, resolve_url
from edge_runtime.update.store import BundleStore
from models.bundle import MANIFEST, SIGNATURE, Manifest, atomic_write_bytes, utc_now_iso
from models.errors import KioskError, UpdateError
from models.signing import load_public_keys

__all__ = ["UPDATE_STATUS_SCHEMA", "Updater", "StagedRelease", "stage_release"]

log = logging.getLogger(__name__)

UPDATE_STATUS_SCHEMA = "kiosk.update-status/1"
QUEUE_MAX = 4
DISK_MARGIN = 64 << 20  # never fill the store's filesystem to the last byte
SEEN_MAX = 64           # command ids remembered to drop QoS 1 redeliveries


@dataclass
class StagedRelease:
    path: Path
    manifest: Manifest
    key_id: str
    timings: dict[str, float] = field(default_factory=dict)
    engines: list[str] = field(default_factory=list)  # prebuilt engines that match this device


def stage_release(store: BundleStore, manifest_url: str, signature: str, keys: dict,
                  cfg: UpdateConfig, *, active: Manifest | None, runtime_version: str,
                  device: DeviceInfo | None = None, cancel: threading.Event | None = None,
                  progress: Callable[[str, dict], None] | None = None) -> StagedRelease:
    """Fetch, verify and download a release into a new staging folder.
    Raises UpdateError (staging removed) or returns the complete staged bundle."""
    progress = progress or (lambda state, detail: None)
    url = resolve_url(manifest_url, manifest_url, allow_http=cfg.allow_http)
    t0 = time.monotonic()
    data = fetch_bytes(url, cfg.max_manifest_bytes, cfg.download_timeout_s, ca_file=cfg.ca_file,
                       cancel=cancel)
    manifest, kid = verified_manifest(data, signature, keys)
    check_manifest(manifest, active=active, runtime_version=runtime_version,
                   max_total_bytes=cfg.max_total_bytes)
    # Resolve every URL before the first byte is downloaded: a bad one rejects the release.
    urls = [resolve_url(url, a.url or a.name, allow_http=cfg.allow_http) for a in manifest.artifacts]
    t1 = time.monotonic()
    progress("verified", {"bundle_version": manifest.bundle_version, "key_id": kid})
    total = sum(a.size for a in manifest.artifacts)
    free = shutil.disk_usage(store.root).free
    if total + DISK_MARGIN > free:
        raise UpdateError(f"release needs {total} bytes, {store.root} has {free} free "
                          f"(keeping a margin of {DISK_MARGIN})")
    progress("downloading", {"bundle_version": manifest.bundle_version,
                             "artifacts": len(manifest.artifacts), "bytes": total})
    staged = store.new_staging()
    try:
        for a, a_url in zip(manifest.artifacts, urls, strict=True):
            download_file(a_url, staged / a.name, a.size, a.sha256, cfg.download_timeout_s,
                          ca_file=cfg.ca_file, cancel=cancel)
        atomic_write_bytes(staged / MANIFEST, data)
        atomic_write_bytes(staged / SIGNATURE, (signature.strip() + "\n").encode())
    except BaseException:
        store.discard(staged)
        raise
    t2 = time.monotonic()
    engines = [a.name for a in manifest.artifacts if engine_matches(manifest, a.name, device or DeviceInfo())]
    return StagedRelease(staged, manifest, kid, {"verify_s": t1 - t0, "download_s": t2 - t1}, engines)


def prepare_tensorrt_engine(staged: Path, prebuilt: list[str], device: Any,
                            precision: str = "fp16", build: Callable[..., Any] | None = None) -> Path:
    """Give a staged release a TensorRT engine for this device before it is
    tested: a prebuilt engine from the (signed, sha-checked) release whose
    compatibility matches ``device`` is entered into the bundle's engine cache
    (hard link + sidecar keyed like `edge-runtime build-engine`'s); otherwise
    one is built from the ONNX on this device. A prebuilt engine that does not
    match is never deserialised."""
    from edge_runtime.encoders.select import EngineKey, engine_paths, write_sidecar
    from models.bundle import read_manifest

    m = read_manifest(staged)
    for name in prebuilt:
        a = m.artifact(name)
        key = EngineKey.for_device(m.encoder.sha256, device, a.engine.precision)
        engine, sidecar = engine_paths(staged, key)
        engine.parent.mkdir(exist_ok=True)
        try:
            os.link(staged / name, engine)
        except OSError:
            shutil.copyfile(staged / name, engine)
        write_sidecar(sidecar, key, engine, source=f"release artifact {name}")
        return engine
    if build is None:
        from edge_runtime.encoders.engine_build import build_engine as build
    return build(staged, m, device, precision=precision)


def _default_open(path: Path) -> Any:
    from edge_runtime.matcher import Matcher

    return Matcher.open(path)


class Updater:
    """See module docstring.

    ``open_matcher(path) -> Matcher`` opens a release the way the runtime
    opened the first one (backend, threads, threshold); default
    ``Matcher.open(path)`` (ONNX Runtime). ``prepare_engine(path, engines)``,
    when given, runs for the TensorRT backend after the download: ``engines``
    lists the release's prebuilt engines that match ``device`` (empty: build
    one from the ONNX). ``on_swap(new_path)`` is told the new active folder."""

    def __init__(self, store: BundleStore, mqtt: Any, pipeline: Any, cfg: UpdateConfig,
                 runtime_version: str, *, open_matcher: Callable[[Path], Any] | None = None,
                 device: DeviceInfo | None = None,
                 prepare_engine: Callable[[Path, list[str]], None] | None = None,
                 on_swap: Callable[[Path], None] | None = None) -> None:
        self.store = store
        self.mqtt = mqtt
        self.pipeline = pipeline
        self.cfg = cfg
        self.runtime_version = runtime_version
        self.open_matcher = open_matcher or _default_open
        self.device = device or DeviceInfo()
        self.prepare_engine = prepare_engine or self._tensorrt_preparer()
        self.on_swap = on_swap
        self.keys = load_public_keys(cfg.trusted_keys)
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_MAX)
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, name="updater", daemon=True)
        self.last_timings: dict[str, float] = {}
        self.busy = threading.Event()
        self._seen: deque[str] = deque(maxlen=SEEN_MAX)

    def _tensorrt_preparer(self) -> Callable[[Path, list[str]], None] | None:
        """When the kiosk runs a TensorRT engine, each release needs one too."""
        encoder = getattr(getattr(self.pipeline, "current_matcher", None), "encoder", None)
        if getattr(encoder, "name", "") != "tensorrt":
            return None
        precision = getattr(encoder, "precision", "fp16")
        if self.device.trt_version is None:  # the device prebuilt engines must match
            from edge_runtime.encoders.select import probe_device

            device, why = probe_device()
            if device is None:
                log.warning("running a TensorRT engine but cannot probe the device: %s", why)
            else:
                self.device = device

        def prepare(staged: Path, prebuilt: list[str]) -> None:
            if getattr(self.device, "trt_version", None) is None:
                raise UpdateError("TensorRT engine needed but the device could not be probed")
            prepare_tensorrt_engine(staged, prebuilt, self.device, precision)
        return prepare

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        m = self.store.active_manifest()
        self.mqtt.set_status(bundle_version=m.bundle_version if m else None,
                             groups=list(self.cfg.groups), update_keys=sorted(self.keys))
        self.mqtt.add_command_handler("update", lambda raw: self._submit("update", raw))
        self.mqtt.add_command_handler("rollback", lambda raw: self._submit("rollback", raw))
        self._thread.start()
        log.info("updater ready: store %s, %d pinned key(s) %s", self.store.root, len(self.keys),
                 ", ".join(sorted(self.keys)))

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel a download in progress and wait for the worker (bounded)."""
        self._cancel.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _submit(self, kind: str, raw: bytes) -> None:
        """On paho's thread: hand the payload over, never block."""
        try:
            self._queue.put_nowait((kind, bytes(raw)))
        except queue.Full:
            log.warning("update command dropped: %d already waiting", QUEUE_MAX)
            self._publish(loose_command_id(raw), "rejected", reason="kiosk busy: too many "
                          "update commands waiting; send it again later")

    # ------------------------------------------------------------ status
    def _publish(self, command_id: str | None, state: str, **detail: Any) -> None:
        payload = {"schema": UPDATE_STATUS_SCHEMA, "command_id": command_id, "state": state,
                   "ts": utc_now_iso(), **{k: v for k, v in detail.items() if v is not None}}
        if state in ("active", "rejected", "rolled_back"):  # retained status first: whoever
            # hears the final update/status and then reads the status sees it already
            self.mqtt.set_status(last_update={k: payload.get(k) for k in
                                              ("command_id", "state", "bundle_version", "reason", "ts")})
        self.mqtt.publish_json("update/status", payload, qos=1)

    def _duplicate(self, command_id: str) -> bool:
        """QoS 1 may deliver a command twice; act on each command id once."""
        if command_id in self._seen:
            log.info("command %s already handled; ignoring the redelivery", command_id)
            return True
        self._seen.append(command_id)
        return False

    # ------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._cancel.is_set():
                return
            kind, raw = item
            self.busy.set()
            try:
                if kind == "update":
                    self._update(raw)
                else:
                    self._rollback(raw)
            except Exception as exc:  # the worker must survive anything
                log.exception("update worker error")
                self._publish(loose_command_id(raw), "rejected", reason=f"internal error: {exc}")
            finally:
                self.busy.clear()

    def _update(self, raw: bytes) -> None:
        cid = loose_command_id(raw)
        try:
            cmd = parse_update_command(raw)
        except UpdateError as exc:
            self._publish(cid, "rejected", reason=str(exc))
            return
        cid = cmd.command_id
        if self._duplicate(cid):
            return
        self._publish(cid, "received", manifest_url=cmd.manifest_url)
        active = self.store.active_manifest()
        staged: StagedRelease | None = None
        name: str | None = None
        new = None
        try:
            staged = stage_release(
                self.store, cmd.manifest_url, cmd.signature, self.keys, self.cfg, active=active,
                runtime_version=self.runtime_version, device=self.device, cancel=self._cancel,
                progress=lambda state, d: self._publish(cid, state, **d))
            version = staged.manifest.bundle_version
            timings = dict(staged.timings)
            if self.prepare_engine is not None:
                self._publish(cid, "building", bundle_version=version,
                              prebuilt=staged.engines or None)
                t = time.monotonic()
                self.prepare_engine(staged.path, staged.engines)
                timings["build_s"] = time.monotonic() - t
            self._publish(cid, "testing", bundle_version=version)
            t = time.monotonic()
            name = self.store.commit(staged.path, verify=False)  # open() verifies
            staged = None
            new = self.open_matcher(self.store.releases / name)
            failures = new.self_test()
            if failures:
                raise UpdateError(f"self-test failed: {'; '.join(failures[:3])}")
            timings["test_s"] = time.monotonic() - t
            t = time.monotonic()
            path = self.store.activate(name)
            try:
                old = self.pipeline.swap_matcher(new)
            except BaseException:
                self.store.rollback()  # the link must name what serves
                raise
            new = None
            timings["swap_s"] = time.monotonic() - t
            _close(old)
            if self.on_swap is not None:
                self.on_swap(path)
        except Exception as exc:
            if staged is not None:
                self.store.discard(staged.path)
            if new is not None:
                _close(new)
            if name is not None and name != self.store.current_name():
                self.store.remove_release(name)
            if isinstance(exc, KioskError):
                reason = str(exc)
            elif isinstance(exc, OSError):
                reason = f"I/O error: {exc}"
            else:
                log.exception("update %s failed", cid)
                reason = f"internal error: {type(exc).__name__}: {exc}"
            log.warning("update %s rejected: %s", cid, reason)
            self._publish(cid, "rejected", reason=reason,
                          active_version=active.bundle_version if active else None)
            return
        self.last_timings = timings
        log.info("update %s: release %d active (%s)", cid, version,
                 ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
        self.mqtt.set_status(bundle_version=version)
        self._publish(cid, "active", bundle_version=version,
                      previous_version=active.bundle_version if active else None,
                      timings={k: round(v, 4) for k, v in timings.items()})

    def _rollback(self, raw: bytes) -> None:
        cid = loose_command_id(raw)
        try:
            cmd = parse_rollback_command(raw)
            cid = cmd.command_id
            if self._duplicate(cid):
                return
            self._publish(cid, "received")
            prev = self.store.previous_name()
            if prev is None:
                raise UpdateError("no previous bundle to roll back to")
            new = self.open_matcher(self.store.releases / prev)
            try:
                path = self.store.rollback()
            except BaseException:
                _close(new)
                raise
            _close(self.pipeline.swap_matcher(new))
            if self.on_swap is not None:
                self.on_swap(path)
        except KioskError as exc:
            self._publish(cid, "rejected", reason=str(exc))
            return
        version = new.manifest.bundle_version
        self.mqtt.set_status(bundle_version=version)
        self._publish(cid, "rolled_back", bundle_version=version)


def _close(matcher: Any) -> None:
    try:
        matcher.close()
    except Exception:  # a failing close must not undo a finished swap
        log.exception("closing the old matcher failed")
