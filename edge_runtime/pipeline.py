"""The running kiosk: frames -> scene -> encoder -> search -> decision -> events -> MQTT.

One loop on the caller's thread; the capture thread (sources.py) and the MQTT
publishing thread (mqtt.py) run beside it. By default (``presenter`` given)
each frame goes through the scene model, framing and presentation tracker
(presenter.py): one event per product presented, nothing encoded while the
counter is empty. Without a presenter (``[presence] mode = "off"``) every
frame is encoded whole (inside the ROI) and the windowed vote of decision.py
decides, with reserved ``_`` items such as ``_background`` meaning "nothing";
there, when several frames are waiting (a file played as fast as possible) up
to ``max_batch`` are encoded together. Latency is measured per frame from the
capture stamp (``Frame.captured``) to the decision, and for events from the
capture of the frame the decision rests on to the hand-over to the MQTT publisher.

``swap_matcher`` replaces the matcher between batches (remote updates load and
warm the new bundle first, swap, then close the old one); it waits for the
batch in progress, so the returned matcher is no longer in use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge_runtime.decision import Decider, Decision, EmbeddingWindow
from edge_runtime.events import match_payload
from edge_runtime.metrics import RuntimeStats
from edge_runtime.presentation import Outcome
from edge_runtime.snapshot import encode_capped_jpeg, snapshot_payload
from edge_runtime.sources import Frame, FrameSource, crop_roi

__all__ = ["PipelineOptions", "Pipeline", "Publisher"]

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish_json(self, subtopic: str, payload: dict[str, Any], qos: int = 1,
                     retain: bool = False) -> None: ...


@dataclass(frozen=True)
class PipelineOptions:
    kiosk_id: str
    camera_id: str
    top_k: int = 5
    max_batch: int = 4
    roi: tuple[int, int, int, int] | None = None
    aggregate: int = 3
    threshold: float | None = None   # None: the matcher's (bundle's) threshold
    snapshot_max_bytes: int = 0      # > 0: publish a JPEG of the crop beside each event
    snapshot_max_side: int = 224


class Pipeline:
    def __init__(self, source: FrameSource, matcher: Any, decider: Decider, publisher: Publisher,
                 options: PipelineOptions, *, stats: RuntimeStats | None = None,
                 preview: Any = None, on_event: Callable[[dict[str, Any]], None] | None = None,
                 heartbeat: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, presenter: Any = None,
                 live: Any = None) -> None:
        self.source = source
        self._matcher = matcher
        self.decider = decider
        self.publisher = publisher
        self.options = options
        self.stats = stats or RuntimeStats(clock=clock)
        self.preview = preview
        self.on_event = on_event
        self.heartbeat = heartbeat   # called every loop turn with "a frame came" (watchdog)
        self.clock = clock
        self.window = EmbeddingWindow(options.aggregate)
        self.presenter = presenter
        if presenter is not None:
            presenter.rebind(self._threshold(matcher))
        self.live = live   # web_hub.LiveHub: offer(frame, info) every frame, event(payload, view)
        self._lock = threading.Lock()
        self._relearn = threading.Event()
        self.relearnt = 0   # re-learn requests honoured
        self.frames = 0

    # ------------------------------------------------------------ matcher swap
    @property
    def current_matcher(self) -> Any:
        return self._matcher

    def swap_matcher(self, new: Any) -> Any:
        """Use ``new`` from the next batch on; return the old matcher (caller closes it)."""
        with self._lock:
            old, self._matcher = self._matcher, new
            self.window.reset()   # embeddings of another encoder are not comparable
            if self.presenter is not None:
                self.presenter.rebind(self._threshold(new))
        log.info("matcher swapped: bundle %s -> %s", _version(old), _version(new))
        return old

    def request_relearn(self) -> bool:
        """Ask the frame loop to forget the empty counter and learn it again from
        the next frames (any thread; honoured at the next frame). False when
        there is no scene model (``[presence] mode = "off"``)."""
        if self.presenter is None:
            return False
        self._relearn.set()
        return True

    # ------------------------------------------------------------ loop
    def run(self, stop: threading.Event, max_frames: int | None = None) -> str:
        """Process until the source ends ("ended"), ``stop`` is set ("stopped") or
        ``max_frames`` frames were processed ("max_frames")."""
        while not stop.is_set():
            if max_frames is not None and self.frames >= max_frames:
                return "max_frames"
            first = self.source.read(timeout=0.25)
            if self.heartbeat is not None:
                self.heartbeat(first is not None)
            if first is None:
                if self.source.ended:
                    self._flush()
                    return "ended"
                continue
            batch = [first]
            limit = self.options.max_batch
            if max_frames is not None:
                limit = min(limit, max_frames - self.frames)
            while len(batch) < limit:
                nxt = self.source.read(timeout=0.0)
                if nxt is None:
                    break
                batch.append(nxt)
            self.process(batch)
        return "stopped"

    def _threshold(self, matcher: Any) -> float:
        t = self.options.threshold
        return float(matcher.threshold if t is None else t)

    def process(self, frames: list[Frame]) -> list[Any]:
        """Decide a batch of frames (in order); publish events. Returns the
        decisions (Outcomes with a presenter, else Decisions)."""
        if self.presenter is not None:
            return self._process_scene(frames)
        roi = self.options.roi
        decisions = []
        with self._lock:
            matcher = self._matcher
            crops = [crop_roi(f.image, roi) for f in frames]
            embs = np.asarray(matcher.encode(crops), dtype=np.float32)
            agg = np.stack([self.window.push(e) for e in embs])
            results = matcher.search(agg, top_k=self.options.top_k)
            threshold = self.options.threshold
            if threshold is None:
                threshold = matcher.threshold
            for frame, crop, matches in zip(frames, crops, results, strict=True):
                decision = self.decider.update(matches, frame.t, threshold)
                if decision is not None:
                    self._publish(frame, decision, matcher)
                    decisions.append(decision)
                self.stats.frame((self.clock() - frame.captured) * 1000.0)
                self.frames += 1
                if self.preview is not None:
                    self.preview.write(crop, frame, matches, decision, self.decider.present,
                                       threshold)
                if self.live is not None:
                    self.live.offer(frame)
        return decisions

    def _flush(self) -> None:
        """A file source ended: the presentation in progress is decided as if the
        product had left."""
        if self.presenter is None:
            return
        with self._lock:
            for o in self.presenter.tracker.flush():
                self._handle(o, self._matcher)

    def _handle(self, o: Outcome, matcher: Any) -> None:
        if o.kind == "match":
            self._publish_outcome(o, matcher)
        else:
            self.stats.unknown()
            log.info("presentation %d: unknown product (%d views used)", o.presentation,
                     o.frames_used)

    def _process_scene(self, frames: list[Frame]) -> list[Outcome]:
        roi = self.options.roi
        offset = (0, 0) if roi is None else (max(roi[0], 0), max(roi[1], 0))
        out: list[Outcome] = []
        with self._lock:
            matcher = self._matcher
            if self._relearn.is_set():
                self._relearn.clear()
                self.presenter.relearn()
                self.relearnt += 1
                log.info("relearning the empty counter (asked from the page)")
            for frame in frames:
                info = self.presenter.step(crop_roi(frame.image, roi), frame, matcher, offset)
                for o in info.outcomes:
                    out.append(o)
                    self._handle(o, matcher)
                self.stats.frame((self.clock() - frame.captured) * 1000.0)
                self.frames += 1
                if self.preview is not None:
                    self.preview.write_scene(frame, info)
                if self.live is not None:
                    self.live.offer(frame, info)
        return out

    def _publish_outcome(self, o: Outcome, matcher: Any) -> None:
        m, ev = matcher.manifest, o.evidence
        latency_ms = (self.clock() - ev.captured) * 1000.0
        payload = match_payload(
            kiosk_id=self.options.kiosk_id, camera_id=self.options.camera_id,
            frame_index=ev.index, source_ts=ev.source_ts, latency_ms=latency_ms,
            matches=o.matches, bundle_version=m.bundle_version, encoder_sha256=m.encoder.sha256,
            backend=getattr(matcher.encoder, "name", "unknown"), votes=o.frames_used,
            held_s=o.held_s, top_k=self.options.top_k,
            presentation={"number": o.presentation, "first_frame": o.first_frame,
                          "last_frame": o.last_frame, "frames_used": o.frames_used,
                          "reason": o.reason})
        self.publisher.publish_json("match", payload, qos=1)
        self.stats.event(latency_ms)
        log.info("match %s (score %.3f, %s, %d views) at frame %d", o.item_id, o.matches[0].score,
                 o.reason, o.frames_used, ev.index,
                 extra={"event_id": payload["event_id"], "item_id": o.item_id})
        if self.options.snapshot_max_bytes > 0 and o.view is not None:
            jpeg = encode_capped_jpeg(o.view, self.options.snapshot_max_bytes,
                                      self.options.snapshot_max_side)
            if jpeg is not None:
                self.publisher.publish_json("match/snapshot", snapshot_payload(
                    event_id=payload["event_id"], kiosk_id=self.options.kiosk_id,
                    camera_id=self.options.camera_id, item_id=str(o.item_id),
                    frame_index=ev.index, jpeg=jpeg), qos=1)
        if self.live is not None:
            self.live.event(payload, o.view)
        if self.on_event is not None:
            self.on_event(payload)

    def _publish(self, frame: Frame, d: Decision, matcher: Any) -> None:
        m = matcher.manifest
        latency_ms = (self.clock() - frame.captured) * 1000.0
        payload = match_payload(
            kiosk_id=self.options.kiosk_id, camera_id=self.options.camera_id,
            frame_index=frame.index, source_ts=frame.source_ts, latency_ms=latency_ms,
            matches=d.matches, bundle_version=m.bundle_version, encoder_sha256=m.encoder.sha256,
            backend=getattr(matcher.encoder, "name", "unknown"), votes=d.votes, held_s=d.held_s,
            top_k=self.options.top_k)
        self.publisher.publish_json("match", payload, qos=1)
        self.stats.event(latency_ms)
        log.info("match %s (score %.3f) at frame %d", d.item_id, d.matches[0].score, frame.index,
                 extra={"event_id": payload["event_id"], "item_id": d.item_id})
        if self.live is not None:
            self.live.event(payload)
        if self.on_event is not None:
            self.on_event(payload)


def _version(matcher: Any) -> Any:
    return getattr(getattr(matcher, "manifest", None), "bundle_version", "?")
