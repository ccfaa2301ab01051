"""Shared bits of the trainer tests: tiny-model flags and an in-process CLI call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from trainer.cli import main

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
TINY = ["--backbone", "scratch", "--size", "32", "--width", "8", "--depth", "2", "--embedding-size", "16", "--no-progress",
        "--log-every", "0", "--batch-size", "4"]


def fit(catalogue: Path, out: Path, *extra: str) -> int:
    return main(["fit", str(catalogue), "--out", str(out), *TINY, *extra])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _constant_names(model) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def check_trt_parsable(path) -> None:
    """The ONNX file at ``path`` holds only operators TensorRT 8.5 and 10 both
    parse (trainer.export.TRT_OPS), with the constant inputs they need."""
    import onnx

    from trainer.export import TRT_OPS

    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert ops <= TRT_OPS, ops - TRT_OPS
    consts = _constant_names(model)
    # explicit quantization: weights may come through a DequantizeLinear of an initialiser
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts}
    for n in model.graph.node:
        if n.op_type == "Clip":
            assert all(i in consts for i in n.input[1:] if i), f"Clip {n.name} has non-constant bounds"
        if n.op_type == "Pow":
            assert n.input[1] in consts, f"Pow {n.name}: the exponent must be a constant"
        if n.op_type in ("Conv", "Gemm"):
            assert n.input[1] in consts, f"{n.op_type} {n.name}: weights must be an initialiser"
