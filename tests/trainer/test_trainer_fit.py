"""`trainer fit` on the tiny catalogue: learning, resume, DDP, no pickle, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from trainer_helpers import ROOT, TINY, fit, metrics, state

from trainer.checkpoint import load_model


def test_short_run_lowers_the_loss_and_writes_a_run_folder(tiny_catalogue, tmp_path):
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, "--epochs", "12", "--lr", "5e-3") == 0
    train = [m for m in metrics(out) if m["kind"] == "train"]
    first = sum(m["loss"] for m in train[:3]) / 3
    last = sum(m["loss"] for m in train[-3:]) / 3
    assert last < first * 0.9, (first, last)
    assert {"config.json", "best.safetensors", "last.safetensors", "optim.safetensors", "state.json",
            "metrics.jsonl", "curves.png"} <= {p.name for p in out.iterdir()}
    assert any(m["kind"] == "val" for m in metrics(out))
    model, net, run_id = load_model(out)
    assert net.input.size == 32 and net.width == 8 and len(run_id) == 12
    assert state(out)["step"] == 24  # 8 training photos / batch 4 = 2 steps per epoch


def test_no_pickle_anywhere_in_the_run_folder(tiny_catalogue, tmp_path):
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, "--epochs", "1") == 0
    for p in out.rglob("*"):
        assert p.suffix not in {".pt", ".pth", ".pkl", ".pickle", ".ckpt"}, p
        head = p.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), p
        assert head != b"PK", f"{p} is a zip (torch.save) file"


def test_resume_continues_from_the_saved_step(tiny_catalogue, tmp_path):
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, "--epochs", "2") == 0
    assert state(out)["step"] == 4
    n_before = len(metrics(out))
    assert fit(tiny_catalogue, out, "--epochs", "4", "--resume") == 0
    assert state(out)["step"] == 8
    later = [m for m in metrics(out)[n_before:] if m["kind"] == "train"]
    assert later and min(m["step"] for m in later) == 5  # the first step after the saved one


def test_unlabelled_images_train_with_reconstruction_only(tiny_catalogue, tmp_path):
    unl = tmp_path / "captures"
    unl.mkdir()
    for p in list(tiny_catalogue.rglob("*.jpg"))[:4]:
        shutil.copy(p, unl / f"{p.parent.name}-{p.name}")
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, "--epochs", "1", "--unlabelled", str(unl)) == 0
    cfg = (out / "config.json").read_text()
    assert '"images": 16' in cfg


@pytest.mark.parametrize("objective", ["ae", "metric"])
def test_other_objectives_run(tiny_catalogue, tmp_path, objective):
    out = tmp_path / objective
    assert fit(tiny_catalogue, out, "--epochs", "1", "--objective", objective) == 0
    keys = {k for m in metrics(out) if m["kind"] == "train" for k in m if k.startswith("loss_")}
    assert keys == ({"loss_recon"} if objective == "ae" else {"loss_metric", "loss_inv"})


def test_two_process_ddp_run_on_cpu(tiny_catalogue, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "trainer.cli", "fit", str(tiny_catalogue), "--out", str(out), *TINY,
                          "--epochs", "2", "--device", "cpu"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    # 8 training photos, 2 processes x batch 4 -> 1 step per epoch
    assert state(out)["step"] == 2
    assert '"world_size": 2' in (out / "config.json").read_text()
    load_model(out)
