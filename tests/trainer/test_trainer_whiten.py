"""The whitened head (trainer/whiten.py): the closed-form fit on synthetic
features with known structure, then on a real run folder through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from support import make_product_photos
from trainer_helpers import fit

from models.catalogue import iter_images, load_catalogue
from models.preprocess import preprocess_batch
from trainer.checkpoint import head_fits, load_model
from trainer.cli import main
from trainer.whiten import HEAD_INFO, HEAD_WEIGHTS, fit_whitening, min_photos


class _Products:
    """Products whose means differ a little along every axis, while each
    photo varies a lot along three shared 'nuisance' directions (light,
    angle, session), on a common offset as pooled ReLU features have: raw
    cosine is dominated by the nuisance."""

    def __init__(self, n_items=10, dim=32, seed=0):
        self.rng = np.random.default_rng(seed)
        self.means = self.rng.normal(0, 1.0, (n_items, dim)) + 5.0
        self.nuisance = self.rng.normal(0, 1.0, (3, dim))

    def photos(self, per_item):
        n, dim = self.means.shape
        x = [m + self.rng.normal(0, 6.0, (per_item, 3)) @ self.nuisance
             + self.rng.normal(0, 0.3, (per_item, dim)) for m in self.means]
        return np.concatenate(x), np.repeat(np.arange(n), per_item)


def _nn_top1(gallery, g_lab, queries, q_lab):
    def norm(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    sim = norm(queries) @ norm(gallery).T
    return float(np.mean(g_lab[np.argmax(sim, axis=1)] == q_lab))


def test_whitening_removes_shared_nuisance_directions():
    products = _Products()
    xg, yg = products.photos(40)
    xq, yq = products.photos(10)  # new photos of the same products
    raw = _nn_top1(xg, yg, xq, yq)
    got = {}
    for shrink in (0.1, 0.5):  # 0.5 (the default) keeps more of the nuisance than 0.1
        w = fit_whitening(xg, yg, dim=16, shrink=shrink)
        assert w is not None and w.weight.shape == (16, 32) and w.bias.shape == (16,)
        got[shrink] = _nn_top1(xg @ w.weight.T + w.bias, yg, xq @ w.weight.T + w.bias, yq)
    assert raw < 0.3 and got[0.1] >= 0.95 and got[0.5] > raw + 0.3, (raw, got)


def test_without_shrinkage_the_within_class_covariance_becomes_the_identity():
    x, y = _Products(seed=3).photos(40)
    w = fit_whitening(x, y, dim=12, shrink=0.0)
    z = x @ w.weight.T.astype(np.float64) + w.bias
    within = sum((z[y == k] - z[y == k].mean(0)).T @ (z[y == k] - z[y == k].mean(0)) for k in np.unique(y))
    np.testing.assert_allclose(within / len(z), np.eye(12), atol=1e-3)
    assert abs(z.mean(axis=0)).max() < 1e-3  # centred on the catalogue


@pytest.mark.parametrize("n,items,dim,channels", [
    (min_photos(16) - 1, 5, 16, 32),   # too few photos for the covariance
    (200, 1, 16, 32),                  # one product: nothing to separate
    (200, 5, 40, 32),                  # more dimensions than features
])
def test_too_little_to_fit_keeps_the_projection(n, items, dim, channels):
    rng = np.random.default_rng(0)
    assert fit_whitening(rng.normal(size=(n, channels)), np.arange(n) % items, dim) is None


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """A real (tiny, scratch) run trained with --head whitened on 6 products x 12 photos."""
    root = tmp_path_factory.mktemp("whiten")
    cat = make_product_photos(root / "cat", n_items=6, per_item=12, size=64)
    run = root / "run"
    assert fit(cat, run, "--epochs", "1", "--head", "whitened") == 0
    return cat, run


def test_fit_writes_a_head_that_the_run_loads(photo_run):
    cat, run = photo_run
    info = json.loads((run / HEAD_INFO).read_text())
    assert info["head"] == "whitened" and info["photos"] == 72 and info["items"] == 6
    assert head_fits(run)
    whitened, net, _ = load_model(run)
    trained, _, _ = load_model(run, head=False)
    x = torch.from_numpy(preprocess_batch([im for _, im in iter_images(load_catalogue(cat).entries)], net.input))
    head = load_file(str(run / HEAD_WEIGHTS))
    with torch.no_grad():
        got = whitened.encoder(x)
        pooled = trained.encoder.pooled(trained.encoder.feature_map(x))
        want = F.normalize(pooled @ head["encoder.proj.weight"].T + head["encoder.proj.bias"], dim=1)
        assert not torch.allclose(got, trained.encoder(x), atol=1e-3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_export_carries_the_head_and_passes_parity(photo_run, tmp_path):
    _, run = photo_run
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "export.json").read_text())["head"] == "whitened"


def test_a_head_fitted_on_other_weights_is_not_applied(photo_run, tmp_path):
    import shutil

    _, run = photo_run
    other = tmp_path / "run"
    shutil.copytree(run, other)
    state = load_file(str(other / "best.safetensors"))
    state["encoder.proj.bias"] = state["encoder.proj.bias"] + 1.0
    save_file(state, str(other / "best.safetensors"))
    assert not head_fits(other)
    model, _, _ = load_model(other)
    torch.testing.assert_close(model.encoder.proj.bias, state["encoder.proj.bias"])


def test_head_command_refits_and_says_when_there_are_too_few_photos(photo_run, tmp_path, capsys):
    cat, run = photo_run
    few = make_product_photos(tmp_path / "few", n_items=3, per_item=3, size=64)
    import shutil

    other = tmp_path / "run"
    shutil.copytree(run, other)
    assert main(["head", str(other), "--catalogue", str(few)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["head"] == "projection" and out["photos"] == 9
    assert not (other / HEAD_WEIGHTS).exists() and not head_fits(other)
    assert main(["head", str(other)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["head"] == "whitened"
    assert head_fits(other)


def test_head_command_on_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["head", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("backbone,head", [("lite0", "whitened"), ("scratch", "projection")])
def test_the_head_default_follows_the_backbone(backbone, head):
    import argparse

    from trainer.fit import _resolve_defaults, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["cat", "--out", "o", "--backbone", backbone])
    _resolve_defaults(a)
    assert a.head == head
    a = p.parse_args(["cat", "--out", "o", "--backbone", backbone, "--head", "projection"])
    _resolve_defaults(a)
    assert a.head == "projection"
