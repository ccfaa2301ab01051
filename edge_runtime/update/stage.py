"""Steps 2-4 of an update: fetch and verify the manifest, check the policy,
download every artifact into a staging folder. Also gives a staged release
its TensorRT engine. Used by the updater, the crash test and the benchmark.

Every failure is a ``Rejected`` with the category of the step it happened in
(``errors.phase``). Time is bounded twice: the manifest must arrive within
``download_timeout_s``, and the manifest plus every artifact within
``deadline_s`` of the start; no network step may stay silent longer than
``download_timeout_s``; ``cancel.is_set()`` ends any wait within a quarter
of a second.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.update.commands import (
    DeviceInfo,
    check_manifest,
    engine_matches,
    verified_manifest,
)
from edge_runtime.update.config import UpdateConfig
from edge_runtime.update.errors import Rejected, phase
from edge_runtime.update.fetch import Budget, Cancel, download_file, fetch_bytes
from edge_runtime.update.store import BundleStore
from edge_runtime.update.urls import resolve_url
from models.bundle import MANIFEST, SIGNATURE, Manifest, atomic_write_bytes

__all__ = ["Cancel", "StagedRelease", "stage_release", "prepare_tensorrt_engine", "DISK_MARGIN"]

DISK_MARGIN = 64 << 20  # never fill the store's filesystem to the last byte


@dataclass
class StagedRelease:
    path: Path
    manifest: Manifest
    key_id: str
    timings: dict[str, float] = field(default_factory=dict)
    engines: list[str] = field(default_factory=list)  # prebuilt engines that match this device


def stage_release(store: BundleStore, manifest_url: str, signature: str, keys: dict,
                  cfg: UpdateConfig, *, serving: Manifest, runtime_version: str,
                  device: DeviceInfo | None = None, cancel: Cancel | None = None,
                  progress: Callable[[str, dict], None] | None = None) -> StagedRelease:
    """Fetch, verify and download a release into a new staging folder.
    ``serving``: the manifest of the bundle the kiosk runs now (compatibility
    is checked against it even when the store has no active release).
    Raises Rejected (staging removed) or returns the complete staged bundle."""
    progress = progress or (lambda state, detail: None)
    urls = cfg.url_policy()
    t0 = time.monotonic()
    everything = Budget(t0 + cfg.deadline_s, cfg.download_timeout_s, cancel)
    url = resolve_url(manifest_url, manifest_url, urls)
    with phase("manifest_unavailable"):
        data = fetch_bytes(url, cfg.max_manifest_bytes,
                           Budget(min(everything.deadline, t0 + cfg.download_timeout_s),
                                  cfg.download_timeout_s, cancel),
                           policy=urls, ca_file=cfg.ca_file)
    manifest, kid = verified_manifest(data, signature, keys)
    check_manifest(manifest, serving=serving, policy=store.policy(),
                   runtime_version=runtime_version, max_total_bytes=cfg.max_total_bytes)
    # Every URL is checked before the first byte is downloaded: one bad one rejects the release.
    art_urls = [resolve_url(url, a.url or a.name, urls) for a in manifest.artifacts]
    t1 = time.monotonic()
    progress("verified", {"bundle_version": manifest.bundle_version, "key_id": kid})
    total = sum(a.size for a in manifest.artifacts)
    free = shutil.disk_usage(store.root).free
    if total + DISK_MARGIN > free:
        raise Rejected("too_large", f"release needs {total} bytes, {store.root} has {free} free "
                       f"(keeping a margin of {DISK_MARGIN})")
    progress("downloading", {"bundle_version": manifest.bundle_version,
                             "artifacts": len(manifest.artifacts), "bytes": total})
    staged = store.new_staging()
    try:
        with phase("artifact_unavailable"):
            for a, a_url in zip(manifest.artifacts, art_urls, strict=True):
                download_file(a_url, staged / a.name, a.size, a.sha256, everything, policy=urls,
                              ca_file=cfg.ca_file)
        atomic_write_bytes(staged / MANIFEST, data)
        atomic_write_bytes(staged / SIGNATURE, (signature.strip() + "\n").encode())
    except BaseException:
        store.discard(staged)
        raise
    t2 = time.monotonic()
    engines = [a.name for a in manifest.artifacts
               if engine_matches(manifest, a.name, device or DeviceInfo())]
    return StagedRelease(staged, manifest, kid, {"verify_s": t1 - t0, "download_s": t2 - t1},
                         engines)


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
