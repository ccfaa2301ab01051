"""Remote updates inside the running kiosk, without stopping the camera loop.

MQTT is the control plane (``kiosk/{id}/cmd/update``, ``cmd/rollback``,
``cmd/revoke``), HTTP(S) the data plane. Commands are checked at the door,
on paho's thread: size, JSON schema and, for updates, the manifest URL
against ``[update] mirrors``; only a valid command is queued (at most
``QUEUE_MAX``), and a command id already handled is dropped (QoS 1 may
deliver twice). ONE worker thread then does, for an update (TUF/Mender
practice):

1. fetch the manifest (bounded, from a mirror) and verify the Ed25519
   signature against the pinned keys BEFORE parsing it;
2. refuse a release at or below the version floor, revoked, expired or
   incompatible with what serves now;
3. download every artifact into a staging folder (deadline-bounded, size
   capped, sha256 while streaming); build a TensorRT engine when needed;
4. commit the release (fsync, rename into releases/), verify it in full in a
   child process (``verify.py``), open it here with what that process found,
   self-test it;
5. switch ``current`` atomically (raising the floor), hot-swap the matcher
   between frames, close the old one, publish the new status.

A command that arrives while an update downloads or verifies abandons that
update ("superseded") within a quarter of a second, so a rollback is never
held up by a slow mirror. Rollback returns to the kept previous release and
retires the one it leaves; revoke adds signed versions to the revoked set
and rolls back when the active release is among them.

Progress goes to ``kiosk/{id}/update/status``. A refusal carries a category
(``error``) and a fixed sentence (``reason``); the detail goes to the local
log only (see errors.py). The retained status says what runs now
(``events.bundle_status``), the floor and revoked versions, and
``last_update``. On any failure the old bundle keeps serving.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.events import bundle_status
from edge_runtime.update.commands import (
    DeviceInfo,
    RevokeCommand,
    RollbackCommand,
    UpdateCommand,
    loose_command_id,
    parse_command,
    verified_revocation,
)
from edge_runtime.update.config import UpdateConfig
from edge_runtime.update.errors import Cancelled, Rejected, category_of, public_reason
from edge_runtime.update.stage import StagedRelease, prepare_tensorrt_engine, stage_release
from edge_runtime.update.store import BundleStore
from edge_runtime.update.verify import verify_release
from models.bundle import utc_now_iso
from models.errors import UpdateError
from models.signing import load_public_keys

__all__ = ["UPDATE_STATUS_SCHEMA", "Updater", "StagedRelease", "stage_release"]

log = logging.getLogger(__name__)

UPDATE_STATUS_SCHEMA = "kiosk.update-status/1"
QUEUE_MAX = 4
SEEN_MAX = 64           # command ids remembered to drop QoS 1 redeliveries
FINAL = ("active", "rejected", "rolled_back", "revoked")


def _default_open(path: Path, verified: Any = None) -> Any:
    from edge_runtime.matcher import Matcher
    from edge_runtime.overlay import find_overlay

    return Matcher.open(path, verified=verified, overlay_dir=find_overlay(path))


class _Preempted:
    """The cancel condition of the update in progress: the kiosk is stopping,
    or a newer command is waiting."""

    def __init__(self, waiting: queue.Queue, stopping: threading.Event) -> None:
        self._waiting, self._stopping = waiting, stopping

    def is_set(self) -> bool:
        return self._stopping.is_set() or not self._waiting.empty()

    def reason(self) -> Rejected:
        if self._stopping.is_set():
            return Rejected("stopping", "abandoned: the kiosk is stopping")
        return Rejected("superseded", "abandoned: a newer command is waiting")


class Updater:
    """See module docstring.

    ``open_matcher(path, verified)`` opens a release the way the runtime
    opened the first one (backend, threads, threshold); ``verified`` is the
    verifier process's ``VerifiedItems``. ``prepare_engine(path, engines)``,
    when given, runs for the TensorRT backend after the download: ``engines``
    lists the release's prebuilt engines that match ``device`` (empty: build
    one from the ONNX). ``on_swap(new_path)`` is told the new active folder."""

    def __init__(self, store: BundleStore, mqtt: Any, pipeline: Any, cfg: UpdateConfig,
                 runtime_version: str, *, open_matcher: Callable[..., Any] | None = None,
                 device: DeviceInfo | None = None,
                 prepare_engine: Callable[[Path, list[str]], None] | None = None,
                 on_swap: Callable[[Path], None] | None = None) -> None:
        self.store = store
        self.mqtt = mqtt
        self.pipeline = pipeline
        self.cfg = cfg
        self.urls = cfg.url_policy()
        self.runtime_version = runtime_version
        self.open_matcher = open_matcher or _default_open
        self.device = device or DeviceInfo()
        self.prepare_engine = prepare_engine or self._tensorrt_preparer()
        self.on_swap = on_swap
        self.keys = load_public_keys(cfg.trusted_keys)
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(QUEUE_MAX)
        self._stopping = threading.Event()
        self._preempt = _Preempted(self._queue, self._stopping)
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
                raise Rejected("engine", "TensorRT engine needed but the device could not be probed")
            prepare_tensorrt_engine(staged, prebuilt, self.device, precision)
        return prepare

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        # A full garbage collection walks every object of the process, holding
        # the GIL for 20-50 ms with a bundle loaded (measured: bench/update.py);
        # the allocations of an update trigger some. Objects alive now (the
        # runtime, the first bundle) are moved out of their reach.
        gc.freeze()
        self._set_status()
        self.mqtt.set_status(groups=list(self.cfg.groups), update_keys=sorted(self.keys))
        for kind in ("update", "rollback", "revoke"):
            self.mqtt.add_command_handler(kind, lambda raw, k=kind: self._submit(k, raw))
        self._thread.start()
        log.info("updater ready: store %s, %d pinned key(s) %s, mirrors %s", self.store.root,
                 len(self.keys), ", ".join(sorted(self.keys)), ", ".join(self.cfg.mirrors))

    def stop(self, timeout: float = 10.0) -> None:
        """Abandon an update in progress and wait for the worker (bounded)."""
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _submit(self, kind: str, raw: bytes) -> None:
        """On paho's thread: check the command at the door, queue it, never block."""
        try:
            cmd = parse_command(kind, bytes(raw), self.urls)
        except Rejected as exc:
            self._reject(loose_command_id(raw), exc)
            return
        if cmd.command_id in self._seen:
            log.info("command %s already handled; ignoring the redelivery", cmd.command_id)
            return
        try:
            self._queue.put_nowait((kind, cmd))
        except queue.Full:   # not remembered: the same command may be sent again
            self._reject(cmd.command_id, Rejected("busy", f"{QUEUE_MAX} commands already waiting"))
            return
        self._seen.append(cmd.command_id)

    # ------------------------------------------------------------ status
    def _publish(self, command_id: str | None, state: str, **detail: Any) -> None:
        payload = {"schema": UPDATE_STATUS_SCHEMA, "command_id": command_id, "state": state,
                   "ts": utc_now_iso(), **{k: v for k, v in detail.items() if v is not None}}
        if state in FINAL:  # retained status first: whoever hears the final update/status
            # and then reads the status sees it already
            self.mqtt.set_status(last_update={k: payload.get(k) for k in (
                "command_id", "state", "bundle_version", "error", "reason", "ts")})
        self.mqtt.publish_json("update/status", payload, qos=1)

    def _reject(self, command_id: str | None, exc: BaseException, **detail: Any) -> None:
        category = category_of(exc)
        if category in ("internal", "io_error"):
            log.error("command %s failed (%s): %r", command_id, category, exc, exc_info=exc)
        else:
            log.warning("command %s rejected (%s): %s", command_id, category, exc)
        self._publish(command_id, "rejected", error=category, reason=public_reason(exc), **detail)

    def _set_status(self) -> None:
        """Retained status = what serves now, and the store's policy."""
        policy = self.store.policy()
        active = self.pipeline.current_matcher
        self.mqtt.set_status(**bundle_status(active), floor=policy.floor,
                             revoked=sorted(policy.revoked),
                             active_revoked=active.manifest.bundle_version in policy.revoked)

    # ------------------------------------------------------------ worker
    def _work(self) -> None:
        handlers = {"update": self._update, "rollback": self._rollback, "revoke": self._revoke}
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            kind, cmd = item
            self.busy.set()
            try:
                handlers[kind](cmd)
            except Exception as exc:  # the worker must survive anything
                self._reject(cmd.command_id, exc)
            finally:
                self.busy.clear()

    def _swap(self, new: Any) -> None:
        _close(self.pipeline.swap_matcher(new))
        self._set_status()
        gc.freeze()   # the new bundle's objects are long-lived: keep them out of full collections

    def _update(self, cmd: UpdateCommand) -> None:
        cid = cmd.command_id
        self._publish(cid, "received", manifest_url=cmd.manifest_url)
        serving = self.pipeline.current_matcher.manifest
        staged: StagedRelease | None = None
        name: str | None = None
        new = None
        try:
            staged = stage_release(
                self.store, cmd.manifest_url, cmd.signature, self.keys, self.cfg, serving=serving,
                runtime_version=self.runtime_version, device=self.device, cancel=self._preempt,
                progress=lambda state, d: self._publish(cid, state, **d))
            version = staged.manifest.bundle_version
            timings = dict(staged.timings)
            if self.prepare_engine is not None:
                self._publish(cid, "building", bundle_version=version,
                              prebuilt=staged.engines or None)
                t = time.monotonic()
                try:
                    self.prepare_engine(staged.path, staged.engines)
                except UpdateError as exc:
                    raise Rejected("engine", str(exc)) from None
                timings["build_s"] = time.monotonic() - t
            self._publish(cid, "testing", bundle_version=version)
            t = time.monotonic()
            name = self.store.commit(staged.path, verify=False)  # verified in full below
            staged = None
            verified = verify_release(self.store.releases / name, timeout=self.cfg.verify_timeout_s,
                                      cancel=self._preempt)
            timings["verify_process_s"] = time.monotonic() - t
            new = self.open_matcher(self.store.releases / name, verified)
            failures = new.self_test()
            if failures:
                raise Rejected("self_test", f"self-test failed: {'; '.join(failures[:3])}")
            timings["test_s"] = time.monotonic() - t
            if self._preempt.is_set():
                raise self._preempt.reason()
            t = time.monotonic()
            path = self.store.activate(name)
            try:
                self._swap(new)
            except BaseException:
                self.store.rollback()  # the link must name what serves
                raise
            new = None
            timings["swap_s"] = time.monotonic() - t
            if self.on_swap is not None:
                self.on_swap(path)
        except Exception as exc:
            if staged is not None:
                self.store.discard(staged.path)
            if new is not None:
                _close(new)
            if name is not None and name != self.store.current_name():
                self.store.remove_release(name)
            if isinstance(exc, Cancelled):
                exc = self._preempt.reason()   # cancelled mid-download or mid-verification
            self._reject(cid, exc, active_version=serving.bundle_version)
            return
        self.last_timings = timings
        log.info("update %s: release %d active (%s)", cid, version,
                 ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
        self._publish(cid, "active", bundle_version=version,
                      previous_version=serving.bundle_version,
                      timings={k: round(v, 4) for k, v in timings.items()})

    def _roll_back(self) -> tuple[int, int]:
        """Serve the kept previous release again; retire the current one.
        Returns (version now active, version left)."""
        prev, left = self.store.previous_name(), self.store.current_name()
        if prev is None:
            raise Rejected("no_previous", "no previous bundle to roll back to")
        verified = verify_release(self.store.releases / prev, timeout=self.cfg.verify_timeout_s)
        new = self.open_matcher(self.store.releases / prev, verified)
        try:
            path = self.store.rollback(verify=False)
        except BaseException:
            _close(new)
            raise
        old_version = self.pipeline.current_matcher.manifest.bundle_version
        self._swap(new)
        if left is not None:
            self.store.remove_release(left)
        if self.on_swap is not None:
            self.on_swap(path)
        return new.manifest.bundle_version, old_version

    def _rollback(self, cmd: RollbackCommand) -> None:
        cid = cmd.command_id
        self._publish(cid, "received")
        version, left = self._roll_back()
        self._publish(cid, "rolled_back", bundle_version=version, previous_version=left)

    def _revoke(self, cmd: RevokeCommand) -> None:
        cid = cmd.command_id
        self._publish(cid, "received")
        revocation, kid = verified_revocation(cmd, self.keys)
        self.store.revoke(set(revocation.revoked))
        active = self.pipeline.current_matcher.manifest.bundle_version
        rolled = None
        if active in revocation.revoked or active in self.store.policy().revoked:
            try:
                active, rolled = self._roll_back()
            except Rejected as exc:  # nothing to go back to: keep serving, say so
                log.error("active release %d is revoked and cannot be rolled back: %s", active, exc)
        self._set_status()
        log.warning("releases %s revoked (key %s)%s", list(revocation.revoked), kid,
                    f"; rolled back from {rolled} to {active}" if rolled else "")
        self._publish(cid, "revoked", revoked=list(revocation.revoked), key_id=kid,
                      bundle_version=active, previous_version=rolled)


def _close(matcher: Any) -> None:
    try:
        matcher.close()
    except Exception:  # a failing close must not undo a finished swap
        log.exception("closing the old matcher failed")
