"""What the Lite0 encoder costs per frame on the kiosk's CPU, and what buys speed.

Every row is an encoder exported exactly as `trainer export` does (ImageNet
weights, a 128-d projection, opset 17), timed in ONNX Runtime on the CPU:
milliseconds per frame at batch 1 (a live camera) and batch 8 (a file played
as fast as possible), median of repeated calls, and GFLOP per frame counted
from the graph. Rows, side by side in one run:

- the input side (96 to 224 px) and where the backbone is cut (after stage
  5 or 6, or with its 1x1 head convolution);
- the TensorFlow "same" padding left as separate Pad nodes (the exporter's
  raw graph) against folded into the convolutions (what export ships);
- INT8 (trainer.quantize, ONNX Runtime static quantization calibrated on
  catalogue photos);
- the whitened head's generalised-mean pooling (trainer/whiten.py, power 2)
  against the plain average.

With ``--run RUN_DIR`` (a trained lite0 run) the accuracy side too: val top-1
against the train photos with the run's encoder in fp32 and in INT8, through
ONNX Runtime, and the cosine between the two embeddings of each photo.

    python bench/encoder_speed.py --run RUN_DIR [--threads 2] [--cuts head --sizes 224]

Writes bench/results/encoder-speed-<time>.md/.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval import cpu_flags  # noqa: E402
from bench.runtime import onnx_flops, time_call  # noqa: E402
from models.catalogue import iter_images, load_catalogue  # noqa: E402
from models.netconfig import LITE0_INPUT, NetConfig  # noqa: E402

SIZES = (96, 128, 160, 192, 224)
CUTS = ("stage5", "stage6", "head")


def export_variant(cut: str, size: int, out: Path, fold: bool = True, pool_power: float = 1.0) -> NetConfig:
    """A Lite0 encoder with ImageNet weights (random projection) as ONNX."""
    import onnx
    import torch

    from models.network import Lite0Encoder
    from trainer.export import _to_onnx_bytes, export_onnx
    from trainer.pretrained import init_lite0

    net = NetConfig(backbone="lite0", cut=cut, input=LITE0_INPUT.model_copy(update={"size": size}))
    torch.manual_seed(0)
    enc = Lite0Encoder(net).eval()
    init_lite0(enc.backbone)
    enc.pool_power = pool_power
    if fold:
        out.write_bytes(export_onnx(enc, net, "bench"))
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx.save(onnx.load_from_string(_to_onnx_bytes(enc, size)), str(out))
    return net


def speed(path: Path, net: NetConfig, threads: int) -> dict:
    from edge_runtime.encoders.onnx_backend import OnnxEncoder

    s = net.input.size
    x8 = np.random.default_rng(0).normal(0, 1, (8, 3, s, s)).astype(np.float32)
    enc = OnnxEncoder(path, net.input, net.embedding_size, threads=threads, providers=["CPUExecutionProvider"])
    try:
        ms = {b: round(time_call(lambda b=b: enc.encode(x8[:b]), min_s=1.5) * 1000 / b, 3) for b in (1, 8)}
    finally:
        enc.close()
    return {"ms_b1": ms[1], "ms_b8": ms[8], "gflop": round(onnx_flops(path) / 1e9, 3),
            "mb": round(path.stat().st_size / 1e6, 1)}


def calibration_images(train: Path, n: int) -> list[np.ndarray]:
    entries = load_catalogue(train).entries
    picks = np.linspace(0, len(entries) - 1, num=min(n, len(entries))).astype(int)
    return [img for _, img in iter_images([entries[i] for i in picks])]


def accuracy(run: Path, data: Path, work: Path, threads: int) -> dict:
    """val top-1 of the run's encoder in fp32 and INT8 (ONNX Runtime)."""
    from edge_runtime.encoders.onnx_backend import OnnxEncoder
    from models.preprocess import preprocess_batch
    from trainer.checkpoint import load_model
    from trainer.export import export_onnx
    from trainer.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_int8
    from trainer.retrieval_metrics import top_k_accuracy

    model, net, run_id = load_model(run)
    fp32, int8 = work / "run-fp32.onnx", work / "run-int8.onnx"
    fp32.write_bytes(export_onnx(model.encoder, net, run_id))
    quantize_int8(fp32, int8, calibration_images(data / "train", DEFAULT_CALIBRATION_IMAGES), net.input)
    sets = {k: load_catalogue(data / k).entries for k in ("train", "val")}
    imgs = {k: [im for _, im in iter_images(list(v))] for k, v in sets.items()}
    labels = {k: np.array([e.item_id for e in v], dtype=object) for k, v in sets.items()}
    out: dict = {"run": str(run), "size": net.input.size, "cut": net.cut}
    embs = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        enc = OnnxEncoder(path, net.input, net.embedding_size, threads=threads)
        e = {k: np.concatenate([enc.encode(preprocess_batch(v[i:i + 32], net.input)) for i in range(0, len(v), 32)])
             for k, v in imgs.items()}
        enc.close()
        embs[name] = e
        out[f"{name}_val_top1"] = round(top_k_accuracy(e["val"] @ e["train"].T, labels["val"], labels["train"], 1), 4)
        out[f"{name}_ms_b1"] = speed(path, net, threads)["ms_b1"]
    cos = np.sum(embs["fp32"]["val"] * embs["int8"]["val"], axis=1)
    out["int8_vs_fp32_cosine_median"] = round(float(np.median(cos)), 4)
    out["int8_vs_fp32_cosine_min"] = round(float(np.min(cos)), 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a trained lite0 run: fp32 vs INT8 accuracy")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/grocery")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--cuts", default=",".join(CUTS), help="comma-separated cuts to time")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated input sides to time")
    a = ap.parse_args()
    cuts = [c for c in a.cuts.split(",") if c]
    if not cuts or not set(cuts) <= set(CUTS):
        ap.error(f"--cuts must be some of {','.join(CUTS)}, got {a.cuts}")
    try:
        sizes = [int(x) for x in a.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes must be comma-separated whole pixel counts, got {a.sizes}")
    import onnxruntime

    from trainer.quantize import quantize_int8
    from trainer.whiten import DEFAULT_POOL_POWER

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calib = calibration_images(a.data / "train", 64)
        for cut in cuts:
            for size in sizes:
                path = work / f"{cut}-{size}.onnx"
                net = export_variant(cut, size, path)
                rows.append({"cut": cut, "size": size, "variant": "fp32", **speed(path, net, a.threads)})
                if size in (128, 160, 224) and cut in ("head", "stage5"):
                    q = work / f"{cut}-{size}-int8.onnx"
                    quantize_int8(path, q, calib, net.input)
                    rows.append({"cut": cut, "size": size, "variant": "int8", **speed(q, net, a.threads)})
                if cut == "head" and size in (128, 224):
                    raw = work / f"{cut}-{size}-raw.onnx"
                    export_variant(cut, size, raw, fold=False)
                    rows.append({"cut": cut, "size": size, "variant": "fp32, Pad nodes not folded",
                                 **speed(raw, net, a.threads)})
                    gem = work / f"{cut}-{size}-gem.onnx"
                    export_variant(cut, size, gem, pool_power=DEFAULT_POOL_POWER)
                    rows.append({"cut": cut, "size": size,
                                 "variant": f"fp32, generalised-mean pooling (power {DEFAULT_POOL_POWER:g})",
                                 **speed(gem, net, a.threads)})
                print(json.dumps(rows[-1]), flush=True)
        acc = accuracy(a.run, a.data, work, a.threads) if a.run else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {"time": stamp, "threads": a.threads, "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
              "onnxruntime": onnxruntime.__version__, "load_avg_1m_end": os.getloadavg()[0], "rows": rows,
              "accuracy": acc}
    flags = ", ".join(k for k, v in result["cpu_flags"].items() if v)
    md = [f"Lite0 encoder (128-d) in ONNX Runtime {onnxruntime.__version__}, {a.threads} threads, "
          f"{os.cpu_count()} cores (flags: {flags}; load {result['load_avg_1m_end']:.1f} at the end). "
          "ms per frame, median.", "",
          "| cut | input px | variant | GFLOP | ms, batch 1 | ms, batch 8 | frames/s, batch 1 | MB |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['cut']} | {r['size']} | {r['variant']} | {r['gflop']} | {r['ms_b1']} | {r['ms_b8']} | "
                  f"{1000 / r['ms_b1']:.0f} | {r['mb']} |")
    if acc:
        md += ["", f"Accuracy of {acc['run']} ({acc['size']} px, cut {acc['cut']}), val top-1 against the train "
               f"photos through ONNX Runtime: fp32 {acc['fp32_val_top1']:.3f} ({acc['fp32_ms_b1']} ms), INT8 "
               f"{acc['int8_val_top1']:.3f} ({acc['int8_ms_b1']} ms); cosine between the fp32 and INT8 "
               f"embedding of a val photo: median {acc['int8_vs_fp32_cosine_median']}, "
               f"min {acc['int8_vs_fp32_cosine_min']}."]
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / f"encoder-speed-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.results / f"encoder-speed-{stamp}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
