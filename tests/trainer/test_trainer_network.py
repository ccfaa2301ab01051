"""The encoder stays ONNX-exportable (opset 17) with the L2-normalised embedding
inside the graph, with and without the optional parts (colour-histogram branch,
stride-2 stem, 1x1 widening head)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.netconfig import NetConfig
from models.network import AutoEncoder
from models.preprocess import PreprocessSpec

torch.set_num_threads(1)


@pytest.mark.parametrize("extra,recon_side", [
    ({"depth": 2}, 16), ({"depth": 3, "colour_bins": 6}, 16),
    ({"depth": 2, "stem_stride": 2}, 8), ({"depth": 3, "head_channels": 24, "colour_bins": 4}, 16)])
def test_encoder_exports_to_onnx_and_matches_torch(extra, recon_side):
    torch.manual_seed(0)
    cfg = NetConfig(width=8, embedding_size=16, input=PreprocessSpec(size=32), **extra)
    model = AutoEncoder(cfg).eval()
    x = torch.randn(3, 3, 32, 32)
    emb, raw, rec = model(x)
    assert emb.shape == (3, 16) and rec.shape == (3, 3, recon_side, recon_side)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.encoder, (x,), buf, opset_version=17, input_names=["input"],
                          output_names=["embedding"], dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}},
                          dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, model.encoder(x).detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
