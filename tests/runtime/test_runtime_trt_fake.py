"""Our TensorRT code paths (TensorRT 10 name-based API and 8.5 bindings, the
engine builder, `edge-runtime build-engine`) driven through stand-ins for
``tensorrt`` and ``pycuda`` (fake_trt.py): the GPU is the only fake; the
"engine" runs the bundle's real ONNX model, so the embeddings are compared
with ONNX Runtime's."""

from __future__ import annotations

import json
import shutil
import sys
import types

import fake_trt
import numpy as np
import pytest

from edge_runtime.cli import main as cli_main
from edge_runtime.encoders.select import find_engine, open_encoder, probe_device
from models.bundle import read_manifest


@pytest.fixture
def bundle(tmp_path, pixel_bundle):
    out = tmp_path / "bundle"
    shutil.copytree(pixel_bundle, out)
    return out


@pytest.fixture(params=["10.3.0", "8.5.2.2"])
def fake_gpu(request, monkeypatch, bundle):
    m = read_manifest(bundle)
    trt = fake_trt.make_tensorrt(request.param, bundle / m.encoder.file, m.input.size,
                                 m.embedding_size)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = fake_trt.driver
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake_trt.driver)
    return trt


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_engine_then_auto_runs_it(fake_gpu, bundle, precision, capsys):
    assert cli_main(["build-engine", str(bundle), "--precision", precision, "--max-batch", "4"]) == 0
    path = capsys.readouterr().out.strip()
    assert path.endswith(f"-sm87-{precision}.engine")
    built = fake_gpu.built
    assert built["profile"][1:] == ((1, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32))
    assert "FP16" in built["flags"] and ("INT8" in built["flags"]) == (precision == "int8")
    assert built["network_flags"] == (0 if fake_gpu.__version__.startswith("10") else 1)
    if precision == "int8":
        assert built["calibration_batches"] >= 1 and built["calibration_profile"]
    assert (bundle / "engines" / "timing.cache").read_bytes().startswith(b"TIMING:")
    sidecar = json.loads((bundle / "engines" / path.rsplit("/", 1)[1].replace(".engine", ".json"))
                         .read_text())
    assert sidecar["key"]["gpu_name"] == "Fake Orin" and sidecar["max_batch"] == 4
    # a second build reuses the engine; --rebuild reads the persistent timing cache
    assert cli_main(["build-engine", str(bundle), "--precision", precision]) == 0
    assert "already exists" in capsys.readouterr().out
    assert cli_main(["build-engine", str(bundle), "--precision", precision, "--rebuild",
                     "--max-batch", "4"]) == 0
    assert built["timing_in"].startswith(b"TIMING:")

    m = read_manifest(bundle)
    device, _ = probe_device()
    assert device.compute_capability == "8.7"
    assert find_engine(bundle, m, device)[0] is not None
    trt_enc = open_encoder(bundle, m, "auto")
    ort_enc = open_encoder(bundle, m, "onnxruntime", threads=1)
    try:
        assert trt_enc.name == "tensorrt" and trt_enc.precision == precision
        assert trt_enc.max_batch == 4 and trt_enc.min_batch == 1
        trt_enc.warmup()
        x = np.random.default_rng(0).normal(0, 1, (7, 3, 32, 32)).astype(np.float32)
        a, b = trt_enc.encode(x), ort_enc.encode(x)   # 7 = a batch of 4 and one of 3
        assert a.shape == (7, m.embedding_size) and np.allclose(a, b, atol=1e-5)
        assert fake_trt._Ctx.depth == 0   # every push popped
    finally:
        trt_enc.close()
        ort_enc.close()


def test_quantized_encoder_builds_as_explicit_int8_without_calibration(fake_gpu, bundle, capsys):
    """An INT8 (QDQ) encoder carries its scales: whatever precision is asked,
    TensorRT gets the INT8 flag and no calibrator."""
    from models.bundle import write_manifest

    m = read_manifest(bundle)
    write_manifest(bundle, m.model_copy(update={"encoder": m.encoder.model_copy(update={"precision": "int8"})}))
    assert cli_main(["build-engine", str(bundle), "--precision", "fp16", "--max-batch", "4"]) == 0
    assert capsys.readouterr().out.strip().endswith("-sm87-int8.engine")
    built = fake_gpu.built
    assert "INT8" in built["flags"] and "FP16" in built["flags"]
    assert "calibration_batches" not in built and "calibration_profile" not in built


def test_int8_without_probe_images_fails_before_building(fake_gpu, bundle):
    from edge_runtime.encoders.engine_build import EngineBuildError, build_engine

    m = read_manifest(bundle)
    (bundle / "probes.json").write_text('{"probes": []}')   # (build-engine would refuse the
    device, _ = probe_device()                             # altered bundle even earlier)
    with pytest.raises(EngineBuildError, match="int8 needs calibration images"):
        build_engine(bundle, m, device, "int8")
    assert "profile" not in fake_gpu.built and not list(bundle.glob("engines/*.engine"))


def test_engine_that_does_not_deserialise_is_a_bundle_error(fake_gpu, bundle, capsys):
    from edge_runtime.encoders.select import EngineKey, engine_paths, write_sidecar
    from models.errors import BundleError

    m = read_manifest(bundle)
    device, _ = probe_device()
    engine, sidecar = engine_paths(bundle, EngineKey.for_device(m.encoder.sha256, device, "fp16"))
    engine.parent.mkdir()
    engine.write_bytes(b"garbage")
    write_sidecar(sidecar, EngineKey.for_device(m.encoder.sha256, device, "fp16"), engine)
    with pytest.raises(BundleError, match="could not deserialise"):
        open_encoder(bundle, m, "auto")
