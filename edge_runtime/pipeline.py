"""The running kiosk: frames -> encoder -> search -> decision -> events -> MQTT.

One loop on the caller's thread; the capture thread (sources.py) and the MQTT
publishing thread (mqtt.py) run beside it. When several frames are waiting
(a file played as fast as possible) up to ``max_batch`` are encoded together;
a live source delivers the newest frame only, so batches there are of one.
Latency is measured per frame from the capture stamp (``Frame.captured``) to
the decision, and for events to the hand-over to the MQTT publisher.

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


class Pipeline:
    def __init__(self, source: FrameSource, matcher: Any, decider: Decider, publisher: Publisher,
                 options: PipelineOptions, *, stats: RuntimeStats | None = None,
                 preview: Any = None, on_event: Callable[[dict[str, Any]], None] | None = None,
                 heartbeat: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
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
        self._lock = threading.Lock()
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
        log.info("matcher swapped: bundle %s -> %s", _version(old), _version(new))
        return old

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

    def process(self, frames: list[Frame]) -> list[Decision]:
        """Encode, search and decide a batch of frames (in order); publish events."""
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
        return decisions

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
        if self.on_event is not None:
            self.on_event(payload)


def _version(matcher: Any) -> Any:
    return getattr(getattr(matcher, "manifest", None), "bundle_version", "?")
