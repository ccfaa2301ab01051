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
