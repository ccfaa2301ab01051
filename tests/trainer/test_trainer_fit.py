"""`trainer fit` on the tiny catalogue: learning, resume, DDP, no pickle, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
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


def test_resume_keeps_the_runs_own_seed_and_held_out_share(tiny_catalogue, tmp_path):
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, "--epochs", "1", "--val-fraction", "0", "--seed", "3") == 0
    per_epoch = state(out)["steps_per_epoch"]
    assert fit(tiny_catalogue, out, "--epochs", "2", "--resume") == 0  # the scratch default would hold out 5%
    assert state(out)["steps_per_epoch"] == per_epoch
    assert not [m for m in metrics(out) if m["kind"] == "val"]
    loop = json.loads((out / "config.json").read_text())["train"]["loop"]
    assert (loop["seed"], loop["val_fraction"]) == (3, 0.0)


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


def test_cutmix_run_lowers_the_loss(tiny_catalogue, tmp_path):
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, "--epochs", "12", "--lr", "5e-3", "--cutmix", "1") == 0
    train = [m for m in metrics(out) if m["kind"] == "train"]
    first = sum(m["loss"] for m in train[:3]) / 3
    last = sum(m["loss"] for m in train[-3:]) / 3
    assert last < first * 0.9, (first, last)
    assert json.loads((out / "config.json").read_text())["train"]["loop"]["cutmix"] == 1.0


@pytest.mark.parametrize("objective,cutmix", [("default", 0.5), ("ae", 0.0)])
def test_cutmix_is_on_by_default_only_with_the_classifier(tiny_catalogue, tmp_path, objective, cutmix):
    out = tmp_path / objective
    assert fit(tiny_catalogue, out, "--epochs", "1", "--objective", objective) == 0
    assert json.loads((out / "config.json").read_text())["train"]["loop"]["cutmix"] == cutmix


def _tiny_trainer(catalogue, cfg, n_val: int = 0):
    """A Trainer of the tiny network on the tiny catalogue; the first n_val photos held out."""
    from models.netconfig import NetConfig
    from models.network import AutoEncoder
    from models.preprocess import PreprocessSpec
    from trainer.data import load_image_set
    from trainer.ddp import Dist
    from trainer.loop import Trainer

    net = NetConfig(width=8, depth=2, embedding_size=16, input=PreprocessSpec(size=32))
    data = load_image_set(catalogue, net.input)
    idx = np.arange(len(data))
    return Trainer(AutoEncoder(net), data, idx[n_val:], idx[:n_val], cfg, Dist(0, 1, torch.device("cpu")))


def test_cutmix_batches_paste_the_next_photo_into_every_view(tiny_catalogue):
    from trainer.loop import LoopConfig

    plain = _tiny_trainer(tiny_catalogue, LoopConfig(cutmix=0.0))._views(0, np.arange(4))
    mixed = _tiny_trainer(tiny_catalogue, LoopConfig(cutmix=1.0))._views(0, np.arange(4))
    assert plain.labels_b is None and plain.lam == 1.0
    assert 0.0 < mixed.lam < 1.0
    np.testing.assert_array_equal(mixed.labels, plain.labels)
    np.testing.assert_array_equal(mixed.labels_b, np.roll(plain.labels.numpy(), 1))
    for name in ("v1", "v2", "clean"):
        a, b = getattr(plain, name), getattr(mixed, name)
        changed = (a != b).any(dim=1)  # (N, H, W): pixels that differ in any channel
        assert changed.any(), name
        box = changed.any(dim=0)  # the same box in every photo of the batch
        rows, cols = box.any(dim=1).nonzero(), box.any(dim=0).nonzero()
        inside = (slice(None), slice(None), slice(int(rows.min()), int(rows.max()) + 1),
                  slice(int(cols.min()), int(cols.max()) + 1))
        torch.testing.assert_close(b[inside], a[np.roll(np.arange(4), 1)][inside])


def test_progressive_resizing_makes_small_views_early_then_full_size(tiny_catalogue, tmp_path):
    from trainer.loop import LoopConfig

    tr = _tiny_trainer(tiny_catalogue, LoopConfig(batch_size=4, epochs=4, early_size=16, early_until=0.5, cutmix=1.0))
    half = 2 * tr.steps_per_epoch  # progress 0.5 of a 4-epoch run
    for step, side in ((0, 16), (half - 1, 16), (half, 32), (4 * tr.steps_per_epoch - 1, 32)):
        b = tr._views(step, np.arange(4))
        assert b.v1.shape[-2:] == b.v2.shape[-2:] == b.clean.shape[-2:] == (side, side), step
    # a whole run through the switch, with the default (2/3 of --size 32, to a multiple of 8)
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, "--epochs", "2") == 0
    loop = json.loads((out / "config.json").read_text())["train"]["loop"]
    assert (loop["early_size"], loop["early_until"]) == (16, 0.5)
    train = [m for m in metrics(out) if m["kind"] == "train"]
    assert [m["view_size"] for m in train] == [16, 16, 32, 32]  # 2 steps per epoch
    assert all(np.isfinite(m["loss"]) for m in train)


def test_schedule_clock_leaves_out_the_setup_and_the_run_ends_on_budget(tiny_catalogue):
    from trainer.loop import LoopConfig, lr_at

    tr = _tiny_trainer(tiny_catalogue, LoopConfig(minutes=10))
    assert [tr.progress(t) for t in (0, 300, 600)] == [0.0, 0.5, 1.0]
    tr.setup_s = 300.0  # the view pool took half the budget: warm-up starts when training does
    assert [tr.progress(t) for t in (300, 450, 600)] == [0.0, 0.5, 1.0]
    assert lr_at(tr.progress(300), 1.0, 0.03) == 0.01
    tr.setup_s = 900.0  # a setup past the budget still ends the run at the budget
    assert tr.progress(600) == 1.0


def test_default_early_size_is_two_thirds_of_the_input_or_off():
    from trainer.fit import default_early_size

    assert [default_early_size(s, 16) for s in (96, 128, 64, 24, 16)] == [64, 80, 40, 16, 0]


def test_best_checkpoint_is_chosen_by_held_out_map_not_top1(tiny_catalogue, tmp_path):
    from safetensors.torch import load_file

    from trainer.fit import FitHooks
    from trainer.loop import LoopConfig

    tr = _tiny_trainer(tiny_catalogue, LoopConfig(), n_val=2)
    real = tr.validate()
    assert set(real) == {"top1", "mAP"} and 0 <= real["mAP"] <= 1
    hooks = FitHooks(tmp_path, tr.d, progress=False)
    # top-1 saturates on held-out photos of the training sessions; mAP keeps ranking
    scores = iter([{"top1": 0.9, "mAP": 0.50}, {"top1": 1.0, "mAP": 0.45}, {"top1": 0.95, "mAP": 0.60}])
    tr.validate = lambda: next(scores)
    kept = {}
    for step in (10, 20, 30):
        tr.step = step
        with torch.no_grad():
            tr.model.encoder.proj.bias.fill_(step)  # tell the checkpoints apart
        hooks.validate(tr)
        kept[step] = load_file(str(tmp_path / "best.safetensors"))["encoder.proj.bias"][0].item()
    assert kept == {10: 10.0, 20: 10.0, 30: 30.0}
    assert (tr.best, tr.best_top1, tr.best_step) == (0.60, 0.95, 30)
    vals = [m for m in metrics(tmp_path) if m["kind"] == "val"]
    assert [(m["val_top1"], m["val_mAP"]) for m in vals] == [(0.9, 0.5), (1.0, 0.45), (0.95, 0.6)]
    hooks.save(tr, 1.0)
    assert (state(tmp_path)["best_val_mAP"], state(tmp_path)["best_step"]) == (0.60, 30)
