"""Payloads of the kiosk's MQTT messages (schemas in docs/asyncapi.yaml).

Kept as plain functions returning dicts so the tests can validate exactly
what goes on the wire against the AsyncAPI document.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

__all__ = ["MATCH_SCHEMA", "STATUS_SCHEMA", "METRICS_SCHEMA", "utc_iso", "match_payload",
           "matches_json", "bundle_status"]

MATCH_SCHEMA = "kiosk.match/1"
STATUS_SCHEMA = "kiosk.status/1"
METRICS_SCHEMA = "kiosk.metrics/1"


def utc_iso(ts: float | None = None) -> str:
    """UTC ISO 8601 with milliseconds and a Z (3.10-compatible: no datetime.UTC)."""
    dt = datetime.now(timezone.utc) if ts is None else datetime.fromtimestamp(ts, timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def matches_json(matches: Any, top_k: int | None = None) -> list[dict[str, Any]]:
    """Ranked matches for subscribers: reserved "no product" items (ids starting
    with '_') are left out and the ranks renumbered from 1."""
    real = [m for m in matches if not str(m.item_id).startswith("_")][:top_k]
    return [{"item_id": str(m.item_id), "name": str(m.name), "score": round(float(m.score), 5),
             "rank": i} for i, m in enumerate(real, start=1)]


def match_payload(*, kiosk_id: str, camera_id: str, frame_index: int, source_ts: float,
                  latency_ms: float, matches: Any, bundle_version: int, encoder_sha256: str,
                  backend: str, votes: int, held_s: float, top_k: int | None = None,
                  event_id: str | None = None,
                  presentation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The kiosk.match/1 event. ``event_id`` is fixed once: retries carry the same id.
    ``presentation``: the showing it decides (number, first_frame, last_frame,
    frames_used, reason), when the scene model runs."""
    payload = {
        "schema": MATCH_SCHEMA,
        "event_id": event_id or str(uuid.uuid4()),
        "kiosk_id": kiosk_id,
        "camera_id": camera_id,
        "ts": utc_iso(),
        "frame_index": int(frame_index),
        "source_ts": round(float(source_ts), 4),
        "latency_ms": round(float(latency_ms), 3),
        "item_id": str(matches[0].item_id),
        "matches": matches_json(matches, top_k),
        "bundle_version": int(bundle_version),
        "encoder_sha256": encoder_sha256,
        "backend": backend,
        "votes": int(votes),
        "held_s": round(float(held_s), 3),
    }
    if presentation is not None:
        payload["presentation"] = {k: (v if isinstance(v, str) else int(v))
                                   for k, v in presentation.items()}
    return payload


def bundle_status(matcher: Any) -> dict[str, Any]:
    """The retained-status fields that say what a kiosk runs: the serving
    matcher's release version, encoder and index hashes, backend, and engine
    (the TensorRT engine file, or ONNX Runtime's execution providers), and
    the size of the local enrolment overlay applied to it, if any. Set
    at start and after every swap, so the status never shows a bundle the
    kiosk no longer serves."""
    m, enc = matcher.manifest, matcher.encoder
    name = getattr(enc, "name", "unknown")
    if name == "tensorrt":
        engine = getattr(getattr(enc, "path", None), "name", None)
    else:
        engine = ",".join(getattr(enc, "providers", None) or []) or None
    overlay = getattr(matcher, "overlay", None)
    return {"bundle_version": m.bundle_version, "encoder_sha256": m.encoder.sha256,
            "index_sha256": m.index.sha256, "backend": name, "engine": engine,
            "overlay": overlay.summary() if overlay is not None else None}
