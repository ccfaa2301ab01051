"""Prebuilt TensorRT engines in a release: only one whose TensorRT version and
compute capability match this device is used (entered into the engine cache
the runtime reads); otherwise the engine is built on the device. TensorRT
itself cannot run here: the device is described, the build is a stand-in."""

from __future__ import annotations

import os

from deploy.sign import sign_bundle
from edge_runtime.encoders.select import DeviceInfo, find_engine
from edge_runtime.update.config import UpdateConfig
from edge_runtime.update.stage import prepare_tensorrt_engine, stage_release
from models.bundle import Manifest, artifact_for, read_manifest, verify_bundle, write_manifest
from models.signing import load_public_keys

ORIN = DeviceInfo(trt_version="10.3.0", gpu_name="Orin", compute_capability="8.7")


def _release_with_engines(site, name):
    d = site.copy("v2", name)
    arts = list(read_manifest(d).artifacts)
    for name, cc in (("encoder-sm87.engine", "8.7"), ("encoder-sm72.engine", "7.2")):
        (d / name).write_bytes(os.urandom(2048))
        arts.append(artifact_for(d / name, "engine", engine={
            "trt_version": "10.3.0", "compute_capability": cc, "gpu_name": "Orin",
            "precision": "fp16"}))
    doc = read_manifest(d).model_dump(mode="json", exclude_none=True)
    doc["artifacts"] = [a.model_dump(mode="json", exclude_none=True) for a in arts]
    write_manifest(d, Manifest.model_validate(doc))
    sign_bundle(d, site.keys.key)
    return d


def test_matching_prebuilt_engine_is_cached_and_others_ignored(store, site):
    d = _release_with_engines(site, "engines-orin")
    cfg = UpdateConfig(enabled=True, store_dir=store.root, trusted_keys=[site.keys.pub],
                       mirrors=[site.base])
    staged = stage_release(store, site.url(d.name), site.sig(d.name),
                           load_public_keys(cfg.trusted_keys), cfg, serving=store.active_manifest(),
                           runtime_version="0.1.0", device=ORIN)
    assert staged.engines == ["encoder-sm87.engine"]
    built = []
    engine = prepare_tensorrt_engine(staged.path, staged.engines, ORIN,
                                     build=lambda *a, **k: built.append(a))
    assert not built
    found, why = find_engine(staged.path, staged.manifest, ORIN)
    assert found == engine, why
    assert engine.read_bytes() == (staged.path / "encoder-sm87.engine").read_bytes()
    verify_bundle(staged.path)  # the engine cache is not part of the signed file list
    other = DeviceInfo(trt_version="10.3.0", gpu_name="Xavier", compute_capability="7.2")
    assert find_engine(staged.path, staged.manifest, other)[0] is None
    store.discard(staged.path)


def test_no_matching_engine_means_build_on_device(store, site):
    d = _release_with_engines(site, "engines-nano")
    cfg = UpdateConfig(enabled=True, store_dir=store.root, trusted_keys=[site.keys.pub],
                       mirrors=[site.base])
    nano = DeviceInfo(trt_version="8.5.2", gpu_name="Nano", compute_capability="5.3")
    staged = stage_release(store, site.url(d.name), site.sig(d.name),
                           load_public_keys(cfg.trusted_keys), cfg, serving=store.active_manifest(),
                           runtime_version="0.1.0", device=nano)
    assert staged.engines == []
    calls = []
    prepare_tensorrt_engine(staged.path, staged.engines, nano, "fp16",
                            build=lambda path, m, dev, precision: calls.append((path, dev, precision)))
    assert calls == [(staged.path, nano, "fp16")]
    store.discard(staged.path)
