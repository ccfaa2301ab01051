"""`trainer export RUN_DIR --out BUNDLE_DIR`: the run's encoder (not the
decoder) as one self-contained ONNX file, checked against PyTorch.

The graph: input "input" float32 NCHW at the run's fixed size with a dynamic
batch axis, output "embedding" L2-normalised inside the graph, opset 17 (what
TensorRT 8.5 and 10 both parse), all weights inline (ONNX external-data paths
have had traversal CVEs). onnx-simplifier folds the constant subgraphs the
exporter leaves behind and folds TensorFlow-style "same" padding (explicit
Pad nodes of the Lite0 backbone) into the convolutions' own pads, so the
graph is plain Conv/Clip/Add/pooling/Gemm (``TRT_OPS`` lists what may appear). The model's own description (input spec, embedding
size, run id) goes into the ONNX metadata_props and into ``export.json``,
which `trainer index` turns into the bundle manifest.

The output folder appears complete or not at all: everything is written to a
staging folder beside it and renamed into place after the checks pass.
"""

from __future__ import annotations

import argparse
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from models.bundle import ENCODER, atomic_write_bytes, sha256_file, utc_now_iso
from models.catalogue import load_catalogue
from models.errors import ImageError, KioskError
from models.images import read_image
from models.indexing import EXPORT_INFO, ExportInfo, commit_dir, staging
from models.netconfig import NetConfig
from models.preprocess import preprocess_batch
from trainer.checkpoint import load_model, read_config

__all__ = ["ExportError", "OPSET", "export_onnx", "check_parity", "export_run"]

log = logging.getLogger(__name__)

OPSET = 17
# ONNX operators that both TensorRT 8.5 (JetPack 5) and 10 (JetPack 6) parse
# (onnx-tensorrt docs/operators.md of each release) and that our encoders may
# use; Clip's min/max must be constants (tests/trainer/test_export_ops.py).
TRT_OPS = frozenset({
    "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "DequantizeLinear", "Div", "Expand", "Flatten",
    "Gemm", "GlobalAveragePool", "MatMul", "Max", "Mul", "Pad", "Pow", "QuantizeLinear", "ReduceL2",
    "ReduceMean", "Relu", "Reshape", "Shape", "Sqrt", "Sub", "Transpose", "Unsqueeze",
})
MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.97  # INT8 against PyTorch fp32, every check image
N_CHECK_IMAGES = 8


class ExportError(KioskError):
    """The exported graph is malformed or disagrees with PyTorch."""


def _to_onnx_bytes(encoder: torch.nn.Module, size: int) -> bytes:
    x = torch.zeros(2, 3, size, size)
    buf = io.BytesIO()
    kwargs = dict(input_names=["input"], output_names=["embedding"], opset_version=OPSET,
                  dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                  do_constant_folding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            # The TorchScript exporter gives a clean single-file opset-17 graph.
            torch.onnx.export(encoder, (x,), buf, dynamo=False, **kwargs)
        except TypeError:  # an older torch without the dynamo switch
            torch.onnx.export(encoder, (x,), buf, **kwargs)
    return buf.getvalue()


def export_onnx(encoder: torch.nn.Module, net: NetConfig, run_id: str) -> bytes:
    """The encoder as checked ONNX bytes with the model's metadata."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    from onnxsim import simplify

    encoder = encoder.eval().cpu().float()
    with torch.no_grad():
        model = onnx.load_from_string(_to_onnx_bytes(encoder, net.input.size))
    model, ok = simplify(model)
    if not ok:
        raise ExportError("onnx-simplifier could not verify the simplified graph against the original")
    onnx.helper.set_model_props(model, {
        "kiosk.format": "1",
        "kiosk.run_id": run_id,
        "kiosk.embedding_size": str(net.embedding_size),
        "kiosk.input_spec": net.input.model_dump_json(),
        "kiosk.net_config": net.model_dump_json(),
    })
    model.producer_name = "kiosk-trainer"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph fails onnx.checker: {exc}") from None
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if opsets.get("ai.onnx") != OPSET:
        raise ExportError(f"exported graph has opset {opsets}, expected ai.onnx {OPSET}")
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise ExportError("exported graph refers to external data; it must be one file")
    return model.SerializeToString()


def _check_images(check: Path | None, run_dir: Path, size: int,
                  n: int = N_CHECK_IMAGES) -> tuple[list[np.ndarray], str]:
    """Up to ``n`` real images (evenly spread) for the parity check and INT8
    calibration: --check-images, else the catalogue the run was trained on
    (if its config names one that exists), else noise."""
    source = check
    if source is None:
        _, _, train = read_config(run_dir)
        for key in ("catalogue", "catalog", "train_catalogue", "data"):
            val = train.get(key)
            if isinstance(val, str) and Path(val).exists():
                source = Path(val)
                break
    if source is not None:
        entries = load_catalogue(source).entries
        picks = np.unique(np.linspace(0, len(entries) - 1, num=min(n, len(entries))).astype(int))
        images = []
        for i in picks:
            try:
                images.append(read_image(entries[i].path))
            except ImageError as exc:
                log.warning("parity check: skipping %s", exc)
        if images:
            return images, f"{len(images)} real images from {source}"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size * 3 // 2, size * 2, 3), dtype=np.uint8) for _ in range(n)]
    return images, (f"{len(images)} synthetic noise images (no real images: pass "
                    "--check-images CATALOGUE)")


def check_parity(encoder: torch.nn.Module, onnx_path: Path, net: NetConfig,
                 images: list[np.ndarray]) -> dict[str, float | int]:
    """ONNX Runtime vs PyTorch on the same preprocessed batch, and ONNX
    Runtime at batch 1 vs the batch (the dynamic axis)."""
    from edge_runtime.encoders.onnx_backend import OnnxEncoder

    batch = preprocess_batch(images, net.input)
    with torch.no_grad():
        ref = encoder.eval()(torch.from_numpy(batch)).numpy()
    ort = OnnxEncoder(onnx_path, net.input, net.embedding_size, threads=1)
    got = ort.encode(batch)
    single = ort.encode(batch[:1])
    ort.close()
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {"max_abs_diff": float(np.max(np.abs(ref - got))), "min_cosine": float(np.min(cos)),
            "median_cosine": float(np.median(cos)),
            "batch1_max_abs_diff": float(np.max(np.abs(single[0] - got[0]))),
            "n_images": len(images)}


def export_run(run_dir: Path, out: Path, check_images: Path | None = None, force: bool = False,
               which: str = "best", int8: bool = False) -> ExportInfo:
    """Export ``run_dir``'s encoder into the new partial bundle ``out`` (with
    ``int8``: quantized, trainer.quantize, calibrated on the catalogue)."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out}: already exists and is not empty (use --force to replace it)")
    model, net, run_id = load_model(run_dir, which)
    pretrained = read_config(run_dir)[2].get("pretrained")
    images, source = _check_images(check_images, run_dir, net.input.size)
    data = export_onnx(model.encoder, net, run_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging(out) as stage:
        onnx_path = stage / ENCODER
        atomic_write_bytes(onnx_path, data)
        parity = check_parity(model.encoder, onnx_path, net, images)
        log.info("parity on %s: max abs diff %.3g, min cosine %.7f", source,
                 parity["max_abs_diff"], parity["min_cosine"])
        if parity["max_abs_diff"] > MAX_ABS_DIFF or parity["min_cosine"] < MIN_COSINE \
                or parity["batch1_max_abs_diff"] > MAX_ABS_DIFF:
            raise ExportError(f"ONNX Runtime disagrees with PyTorch on {source}: max abs diff "
                              f"{parity['max_abs_diff']:.3g} (limit {MAX_ABS_DIFF}), min cosine "
                              f"{parity['min_cosine']:.6f} (limit {MIN_COSINE}); nothing written")
        if int8:
            parity = _quantize(model.encoder, onnx_path, net, check_images, run_dir, images, source)
        info = ExportInfo(run_id=run_id, embedding_size=net.embedding_size, input=net.input,
                          opset=OPSET, encoder_sha256=sha256_file(onnx_path), backbone=net.backbone,
                          precision="int8" if int8 else "fp32", head=model.embedding_head,
                          blend=model.embedding_blend, pool_power=model.encoder.pool_power,
                          pretrained=pretrained if isinstance(pretrained, str) else None,
                          parity={**parity, "images": source}, created=utc_now_iso())
        atomic_write_bytes(stage / EXPORT_INFO, (info.model_dump_json(indent=2) + "\n").encode())
        commit_dir(stage, out)
    return info


def _quantize(encoder: torch.nn.Module, onnx_path: Path, net: NetConfig, check: Path | None, run_dir: Path,
              images: list[np.ndarray], source: str) -> dict[str, float | int]:
    """Replace the fp32 ``onnx_path`` by its INT8 version; its parity against
    PyTorch is checked by cosine only (INT8 moves every value a little)."""
    from trainer.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_int8

    calib, calib_source = _check_images(check, run_dir, net.input.size, DEFAULT_CALIBRATION_IMAGES)
    if "real images" not in calib_source:
        raise ExportError("--int8 needs photos to calibrate on: pass --check-images CATALOGUE")
    fp32 = onnx_path.with_name("encoder-fp32.onnx")
    onnx_path.replace(fp32)
    quantize_int8(fp32, onnx_path, calib, net.input)
    fp32.unlink()
    parity = check_parity(encoder, onnx_path, net, images)
    log.info("INT8 parity on %s: median cosine %.5f, min %.5f (calibrated on %s)", source,
             parity["median_cosine"], parity["min_cosine"], calib_source)
    if parity["min_cosine"] < INT8_MIN_COSINE or parity["batch1_max_abs_diff"] > MAX_ABS_DIFF:
        raise ExportError(f"the INT8 encoder strays from PyTorch on {source}: min cosine "
                          f"{parity['min_cosine']:.4f} (limit {INT8_MIN_COSINE}); nothing written")
    return {**parity, "calibration": calib_source}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a `trainer fit` run folder")
    p.add_argument("--out", type=Path, required=True, metavar="BUNDLE_DIR",
                   help="new bundle folder (encoder.onnx + export.json; `trainer index` completes it)")
    p.add_argument("--check-images", type=Path, metavar="CATALOGUE",
                   help="catalogue folder or CSV whose images check ONNX Runtime against PyTorch "
                        "(default: the run's training catalogue if its config names one, else noise)")
    p.add_argument("--weights", choices=("best", "last"), default="best",
                   help="which checkpoint of the run to export (default: best)")
    p.add_argument("--force", action="store_true", help="replace an existing BUNDLE_DIR")
    p.add_argument("--int8", action="store_true",
                   help="quantize the encoder to INT8 (ONNX Runtime static quantization, calibrated on "
                        "256 photos of --check-images or the run's catalogue): about a third of the "
                        "size, the same accuracy; in ONNX Runtime on a 2-core x86 kiosk about the speed of "
                        "fp32 (bench/runtime.py); TensorRT builds it as explicit INT8")


def run(args: argparse.Namespace) -> int:
    info = export_run(args.run_dir, args.out, args.check_images, args.force, args.weights, args.int8)
    par = info.parity
    print(f"exported {args.run_dir} (run {info.run_id}) -> {args.out / ENCODER}: opset {info.opset}, "
          f"input [N, 3, {info.input.size}, {info.input.size}], {info.embedding_size}-d embedding")
    print(f"parity on {par['images']}: max abs diff {par['max_abs_diff']:.3g}, "
          f"min cosine {par['min_cosine']:.7f}")
    print(f"next: trainer index {args.out} CATALOGUE")
    return 0
