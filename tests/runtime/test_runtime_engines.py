"""TensorRT engine cache keys, lookup and backend selection - without a GPU
(the device info is injected; the TensorRT encoder class is replaced by a
recording fake only where a GPU would be needed). Real GPU tests at the end
run only where tensorrt and pycuda import."""

from __future__ import annotations

import importlib.util
import logging
import shutil

import numpy as np
import pytest

from edge_runtime.cli import main as cli_main
from edge_runtime.encoders import tensorrt_backend
from edge_runtime.encoders.engine_build import (
    EngineBuildError,
    calibration_batches,
    calibration_images,
)
from edge_runtime.encoders.select import (
    DeviceInfo,
    EngineKey,
    engine_paths,
    find_engine,
    open_encoder,
    write_sidecar,
)
from models.bundle import read_manifest
from models.errors import BundleError, KioskError

ORIN = DeviceInfo(trt_version="10.3.0", gpu_name="Orin (nvgpu)", compute_capability="8.7")
XAVIER = DeviceInfo(trt_version="8.5.2.2", gpu_name="Xavier", compute_capability="7.2")


@pytest.fixture
def bundle(tmp_path, pixel_bundle):
    out = tmp_path / "bundle"
    shutil.copytree(pixel_bundle, out)
    return out


def put_engine(bundle, device: DeviceInfo, precision="fp16", payload=b"engine-bytes"):
    m = read_manifest(bundle)
    key = EngineKey.for_device(m.encoder.sha256, device, precision)
    engine, sidecar = engine_paths(bundle, key)
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(payload)
    write_sidecar(sidecar, key, engine, max_batch=8)
    return engine, sidecar


class FakeTRT:
    """Stands in for TensorRTEncoder (needs a GPU); records what it was given."""

    opened: list = []
    name = "tensorrt"

    def __init__(self, engine_path, spec, embedding_size, precision="fp16"):
        FakeTRT.opened.append(engine_path)
        self.precision = precision
        self.spec, self.embedding_size, self.max_batch = spec, embedding_size, 8


@pytest.fixture
def fake_trt(monkeypatch):
    FakeTRT.opened = []
    monkeypatch.setattr(tensorrt_backend, "TensorRTEncoder", FakeTRT)
    return FakeTRT


def test_engine_key_in_file_name():
    key = EngineKey.for_device("ab" * 32, ORIN, "int8")
    assert key.stem() == "encoder-abababababab-trt10.3.0-orin-nvgpu-sm87-int8"
    with pytest.raises(KioskError, match="precision"):
        EngineKey.for_device("ab" * 32, ORIN, "fp8")


@pytest.mark.parametrize("field, value", [
    ("trt_version", "10.4.0"), ("gpu_name", "Thor"), ("compute_capability", "9.0"),
])
def test_every_key_field_changes_the_file(field, value):
    a = EngineKey.for_device("ab" * 32, ORIN, "fp16")
    b = EngineKey.for_device("ab" * 32, DeviceInfo(**{**ORIN.__dict__, field: value}), "fp16")
    assert a.stem() != b.stem()


def test_find_engine_for_this_device(bundle):
    m = read_manifest(bundle)
    assert find_engine(bundle, m, ORIN)[0] is None
    engine, _ = put_engine(bundle, ORIN, "fp16")
    found, why = find_engine(bundle, m, ORIN)
    assert found == engine and why == ""
    # an int8 engine is preferred when both exist
    int8, _ = put_engine(bundle, ORIN, "int8")
    assert find_engine(bundle, m, ORIN)[0] == int8


def test_engine_of_another_device_is_refused(bundle):
    m = read_manifest(bundle)
    put_engine(bundle, XAVIER)
    found, why = find_engine(bundle, m, ORIN)
    assert found is None and "for another encoder, TensorRT 10.3.0" in why


def test_sidecar_key_mismatch_is_refused(bundle):
    """An engine copied under this device's file name but built elsewhere."""
    m = read_manifest(bundle)
    engine, sidecar = put_engine(bundle, ORIN)
    other = EngineKey.for_device(m.encoder.sha256, XAVIER, "fp16")
    write_sidecar(sidecar, other, engine)
    found, why = find_engine(bundle, m, ORIN)
    assert found is None and "built for another device" in why and "compute_capability" in why


def test_altered_engine_is_refused(bundle):
    m = read_manifest(bundle)
    engine, _ = put_engine(bundle, ORIN)
    engine.write_bytes(b"tampered")
    found, why = find_engine(bundle, m, ORIN)
    assert found is None and "altered" in why


def test_auto_picks_tensorrt_when_engine_matches(bundle, fake_trt):
    engine, _ = put_engine(bundle, ORIN)
    enc = open_encoder(bundle, read_manifest(bundle), "auto", device=ORIN)
    assert isinstance(enc, FakeTRT) and fake_trt.opened == [engine] and enc.precision == "fp16"


def test_auto_falls_back_to_onnxruntime_and_never_opens_a_foreign_engine(bundle, fake_trt, caplog):
    put_engine(bundle, XAVIER)
    with caplog.at_level(logging.INFO):
        enc = open_encoder(bundle, read_manifest(bundle), "auto", device=ORIN, threads=1)
    assert enc.name == "onnxruntime" and fake_trt.opened == []
    assert "falling back to ONNX Runtime" in caplog.text and "encoder backend: onnxruntime" in caplog.text
    enc.close()


def test_auto_without_tensorrt_uses_onnxruntime(bundle, fake_trt, caplog):
    with caplog.at_level(logging.WARNING):
        enc = open_encoder(bundle, read_manifest(bundle), "auto", device=None,
                           device_reason="tensorrt does not import")
    assert enc.name == "onnxruntime" and "tensorrt does not import" in caplog.text
    emb = enc.encode(np.zeros((2, 3, 32, 32), np.float32))
    assert emb.shape == (2, 48)
    enc.close()


def test_forced_tensorrt_without_engine_is_an_error(bundle, fake_trt):
    with pytest.raises(BundleError, match="build-engine"):
        open_encoder(bundle, read_manifest(bundle), "tensorrt", device=ORIN)
    with pytest.raises(KioskError, match="backend"):
        open_encoder(bundle, read_manifest(bundle), "cuda", device=ORIN)


def test_int8_without_calibration_images_is_an_error(bundle):
    (bundle / "probes.json").write_text('{"probes": []}')
    with pytest.raises(EngineBuildError, match="int8 needs calibration images"):
        calibration_batches(calibration_images(bundle), read_manifest(bundle), 8)


def test_calibration_batches_from_probe_images(bundle):
    paths = calibration_images(bundle)
    assert paths
    batches = calibration_batches(paths, read_manifest(bundle), 5)
    assert all(b.shape == (5, 3, 32, 32) and b.dtype == np.float32 for b in batches)
    assert len(batches) == -(-len(paths) // 5)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt present")
def test_build_engine_without_tensorrt_is_one_line_error(bundle, capsys):
    assert cli_main(["build-engine", str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tensorrt does not import" in err


# ---------------------------------------------------------------- real GPU

def _gpu_ready() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "pycuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs tensorrt and pycuda")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_gpu_engine_matches_onnxruntime(bundle, precision):
    from edge_runtime.encoders.engine_build import build_engine
    from edge_runtime.encoders.select import probe_device
    from edge_runtime.encoders.tensorrt_backend import TensorRTEncoder

    device, why = probe_device()
    assert device is not None, why
    m = read_manifest(bundle)
    path = build_engine(bundle, m, device, precision, max_batch=4)
    assert find_engine(bundle, m, device)[0] is not None
    trt_enc = TensorRTEncoder(path, m.input, m.embedding_size)
    ort = open_encoder(bundle, m, "onnxruntime")
    x = np.random.default_rng(0).normal(0, 1, (6, 3, 32, 32)).astype(np.float32)
    try:
        trt_enc.warmup()
        a, b = trt_enc.encode(x), ort.encode(x)
        cos = np.sum(a * b, axis=1)
        assert cos.min() > (0.99 if precision == "int8" else 0.999)
        auto = open_encoder(bundle, m, "auto")
        assert auto.name == "tensorrt"
        auto.close()
    finally:
        trt_enc.close()
        ort.close()


def test_onnxruntime_threads_sleep_instead_of_spinning(bundle):
    """Spinning intra-op threads starve the capture thread on a 2-core kiosk
    (every frame encoded: 55 against 80 frames/s, README Benchmarks)."""
    enc = open_encoder(bundle, read_manifest(bundle), "onnxruntime", threads=2)
    try:
        opts = enc._sess.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.intra_op_num_threads == 2
    finally:
        enc.close()


@pytest.mark.parametrize("flags,machine,exact", [
    ("fpu avx avx2 fma", "x86_64", False),            # AVX2 only: saturating u8 x s8 kernels
    ("avx2 avx512f avx512_vnni", "x86_64", True),
    ("avx2 avx_vnni", "AMD64", True),
    ("fp asimd asimddp", "aarch64", True),            # Jetson: dot-product kernels
])
def test_int8_fusion_is_kept_only_where_its_kernels_are_exact(flags, machine, exact):
    from edge_runtime.encoders.onnx_backend import int8_kernels_exact

    assert int8_kernels_exact(f"processor\t: 0\nflags\t\t: {flags}\n", machine) is exact


def test_int8_encoder_unfused_reproduces_its_probe_vectors(monkeypatch):
    """The shipped INT8 sample encoder, run with its Quantize/DequantizeLinear
    nodes as written (what a CPU without VNNI gets), embeds its probe photos
    as the bundle stored them."""
    import json
    from pathlib import Path

    from edge_runtime.encoders import onnx_backend
    from models.images import read_image
    from models.preprocess import preprocess

    sample = Path(__file__).resolve().parents[2] / "sample/bundle"
    monkeypatch.setattr(onnx_backend, "_this_cpu_int8_exact", lambda: False)
    m = read_manifest(sample)
    enc = onnx_backend.OnnxEncoder(sample / "encoder.onnx", m.input, m.embedding_size, threads=2)
    try:
        assert enc._sess.get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
        stored = np.load(sample / "embeddings.npy")
        probes = json.loads((sample / "probes.json").read_text())["probes"]
        x = np.stack([preprocess(read_image(sample / p["file"]), m.input) for p in probes])
        cos = np.sum(enc.encode(x) * stored[[p["vector"] for p in probes]], axis=1)
        assert cos.min() >= 0.99, cos
    finally:
        enc.close()
