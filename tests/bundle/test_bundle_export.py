"""`trainer export`: one self-contained opset-17 ONNX file with a dynamic
batch axis, checked against PyTorch on real images; nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.bundle import read_manifest
from models.catalogue import load_catalogue
from models.images import read_image
from models.indexing import EXPORT_INFO

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_export_is_one_file_opset17_with_dynamic_batch(tiny_bundle):
    from onnx.external_data_helper import uses_external_data

    from edge_runtime.encoders.onnx_backend import OnnxEncoder, read_onnx_metadata

    model = onnx.load(str(tiny_bundle / "encoder.onnx"), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    assert not list(tiny_bundle.glob("*.data"))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "embedding"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 32, 32]
    meta = read_onnx_metadata(tiny_bundle / "encoder.onnx")
    assert meta["kiosk.run_id"] == "tiny-seed0" and meta["kiosk.embedding_size"] == "32"
    assert json.loads(meta["kiosk.input_spec"])["size"] == 32

    m = read_manifest(tiny_bundle)
    enc = OnnxEncoder(tiny_bundle / "encoder.onnx", m.input, m.embedding_size, threads=1)
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    three, one = enc.encode(x), enc.encode(x[:1])
    assert three.shape == (3, 32) and one.shape == (1, 32)
    np.testing.assert_allclose(one[0], three[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(three, axis=1), 1.0, atol=1e-5)  # L2 in the graph


def test_parity_against_pytorch_on_real_images(tiny_bundle, tiny_catalogue):
    from trainer.checkpoint import load_model
    from trainer.export import MAX_ABS_DIFF, MIN_COSINE, check_parity

    recorded = json.loads((tiny_bundle / EXPORT_INFO).read_text())["parity"]
    assert "real images" in recorded["images"]
    assert recorded["max_abs_diff"] <= MAX_ABS_DIFF and recorded["min_cosine"] >= MIN_COSINE
    model, net, _ = load_model(tiny_bundle.parent / "run-seed0")
    images = [read_image(e.path) for e in load_catalogue(tiny_catalogue).entries]
    par = check_parity(model.encoder, tiny_bundle / "encoder.onnx", net, images)
    assert par["n_images"] == 12
    assert par["max_abs_diff"] <= MAX_ABS_DIFF and par["min_cosine"] >= MIN_COSINE


def test_failed_parity_writes_nothing(tiny_bundle, tiny_catalogue, tmp_path, monkeypatch):
    import trainer.export as export
    from trainer.cli import main

    monkeypatch.setattr(export, "MAX_ABS_DIFF", -1.0)  # any real difference now fails
    out = tmp_path / "bundle"
    rc = main(["export", str(tiny_bundle.parent / "run-seed0"), "--out", str(out),
               "--check-images", str(tiny_catalogue)])
    assert rc == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_a_non_empty_folder(tiny_bundle, tmp_path, capsys):
    from trainer.cli import main

    (tmp_path / "keep.txt").write_text("x")
    rc = main(["export", str(tiny_bundle.parent / "run-seed0"), "--out", str(tmp_path)])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_export_cli_writes_encoder_and_pending_metadata(tiny_bundle, tiny_catalogue, tmp_path,
                                                        capsys):
    from trainer.cli import main

    out = tmp_path / "b"
    rc = main(["export", str(tiny_bundle.parent / "run-seed0"), "--out", str(out),
               "--check-images", str(tiny_catalogue)])
    text = capsys.readouterr().out
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", EXPORT_INFO]
    assert "opset 17" in text and "parity on 8 real images" in text
    # Same weights, same exporter: the same bytes as the fixture's export.
    assert (out / "encoder.onnx").read_bytes() == (tiny_bundle / "encoder.onnx").read_bytes()
