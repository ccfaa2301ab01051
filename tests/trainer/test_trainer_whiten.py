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
from trainer_helpers import check_trt_parsable, fit

from models.catalogue import iter_images, load_catalogue
from models.preprocess import preprocess_batch
from trainer.checkpoint import RunError, head_fits, load_model
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


LITE0_TINY = ["--backbone", "lite0", "--size", "32", "--embedding-size", "16", "--no-progress", "--log-every", "0",
              "--batch-size", "8", "--freeze", "4", "--cache-views", "2"]


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """A real tiny Lite0 run (stages 5-7 and the head convolution trained) whose
    whitened head was fitted on the default blend with its ImageNet start."""
    root = tmp_path_factory.mktemp("blend")
    cat = make_product_photos(root / "cat", n_items=6, per_item=12, size=64)
    run = root / "run"
    assert main(["fit", str(cat), "--out", str(run), *LITE0_TINY, "--epochs", "2", "--lr", "0.05"]) == 0
    return cat, run


def test_the_head_blends_the_trained_stages_with_imagenet_and_keeps_the_run_as_trained(lite0_run):
    from trainer.pretrained import load_lite0_state
    from trainer.whiten import DEFAULT_BLEND

    _, run = lite0_run
    info = json.loads((run / HEAD_INFO).read_text())
    assert info["head"] == "whitened" and info["blend"] == DEFAULT_BLEND < 1
    head, best, imagenet = load_file(str(run / HEAD_WEIGHTS)), load_file(str(run / "best.safetensors")), \
        load_lite0_state()
    learnt = "encoder.backbone._blocks.8._depthwise_conv.weight"     # stage 5: trained
    frozen = "encoder.backbone._blocks.7._depthwise_conv.weight"     # stage 4: frozen, equal to ImageNet
    start = imagenet[learnt.removeprefix("encoder.backbone.")]
    assert not torch.equal(best[learnt], start)
    torch.testing.assert_close(head[learnt], DEFAULT_BLEND * best[learnt] + (1 - DEFAULT_BLEND) * start)
    assert frozen not in head and "encoder.backbone._bn0.weight" not in head
    blended, _, _ = load_model(run)
    trained, _, _ = load_model(run, head=False)
    assert blended.embedding_blend == DEFAULT_BLEND and trained.embedding_blend == 1.0
    torch.testing.assert_close(blended.state_dict()[learnt], head[learnt])
    torch.testing.assert_close(trained.state_dict()[learnt], best[learnt])   # the run's weights stay as trained
    torch.testing.assert_close(blended.state_dict()[frozen], best[frozen])


def test_export_of_a_blended_head_passes_parity_and_records_the_blend(lite0_run, tmp_path):
    import onnx

    from trainer.whiten import DEFAULT_BLEND, DEFAULT_POOL_POWER

    _, run = lite0_run
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    info = json.loads((tmp_path / "b" / "export.json").read_text())
    assert info["head"] == "whitened" and info["blend"] == DEFAULT_BLEND
    assert info["pool_power"] == DEFAULT_POOL_POWER > 1     # generalised-mean pooling, in the graph too
    check_trt_parsable(tmp_path / "b" / "encoder.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "b" / "encoder.onnx")).graph.node]
    assert ops.count("Pow") == 2 and "GlobalAveragePool" not in ops


def test_int8_export_of_a_generalised_mean_head_stays_close_and_parsable(lite0_run, tmp_path):
    cat, run = lite0_run
    assert main(["export", str(run), "--out", str(tmp_path / "q"), "--int8"]) == 0
    info = json.loads((tmp_path / "q" / "export.json").read_text())
    assert info["precision"] == "int8" and info["pool_power"] > 1 and info["parity"]["min_cosine"] >= 0.97
    check_trt_parsable(tmp_path / "q" / "encoder.onnx")


def test_the_head_pools_as_it_was_fitted_and_older_heads_pool_by_the_average(lite0_run, tmp_path):
    import shutil

    from models.network import gem
    from trainer.whiten import DEFAULT_POOL_POWER

    _, run = lite0_run
    assert json.loads((run / HEAD_INFO).read_text())["pool_power"] == DEFAULT_POOL_POWER
    model, _, _ = load_model(run)
    assert model.encoder.pool_power == DEFAULT_POOL_POWER
    assert load_model(run, head=False)[0].encoder.pool_power == 1.0   # training pools by the average
    fmap = torch.rand(2, 5, 3, 3) * 6
    p = DEFAULT_POOL_POWER
    torch.testing.assert_close(model.encoder.pooled(fmap), (fmap ** p).mean(dim=(2, 3)) ** (1 / p))
    torch.testing.assert_close(gem(fmap, 1.0), fmap.mean(dim=(2, 3)))
    assert torch.all(gem(fmap, 3.0) > gem(fmap, 2.0)) and torch.all(gem(fmap, 2.0) > fmap.mean(dim=(2, 3)))
    assert torch.all(gem(fmap, 3.0) < fmap.amax(dim=(2, 3)))
    old = tmp_path / "run"
    shutil.copytree(run, old)
    info = json.loads((old / HEAD_INFO).read_text())
    del info["pool_power"]                                  # a head.json written before the option
    (old / HEAD_INFO).write_text(json.dumps(info))
    assert load_model(old)[0].encoder.pool_power == 1.0
    for bad in (0.5, "2", None, 1e9):
        (old / HEAD_INFO).write_text(json.dumps({**info, "pool_power": bad}))
        with pytest.raises(RunError, match="pool_power"):
            load_model(old)
    assert main(["head", str(old), "--pool-power", "1"]) == 0
    assert json.loads((old / HEAD_INFO).read_text())["pool_power"] == 1.0


def test_blend_one_is_the_run_as_trained(lite0_run, tmp_path, capsys):
    import shutil

    _, run = lite0_run
    other = tmp_path / "run"
    shutil.copytree(run, other)
    assert main(["head", str(other), "--blend", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["blend"] == 1.0
    assert set(load_file(str(other / HEAD_WEIGHTS))) == {"encoder.proj.weight", "encoder.proj.bias"}
    blended, _, _ = load_model(other)
    trained, _, _ = load_model(other, head=False)
    for k, v in trained.encoder.backbone.state_dict().items():
        assert torch.equal(blended.encoder.backbone.state_dict()[k], v), k


@pytest.mark.parametrize("args,needle", [
    (["--blend", "1.5"], "--blend must be from 0 to 1"),
    (["--blend", "0.5", "--head", "projection"], "--blend 0.5 needs --backbone lite0 and --head whitened"),
    (["--pool-power", "0.5"], "--pool-power must be from 1 (the average) to 8, got 0.5"),
    (["--pool-power", "3", "--head", "projection"], "--pool-power 3 needs --head whitened"),
])
def test_bad_blend_flags_are_one_line(tiny_catalogue, tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    assert main(["fit", str(tiny_catalogue), "--out", str(out), *LITE0_TINY, "--epochs", "1", *args]) == 2
    assert needle in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_blending_a_scratch_run_is_refused(photo_run, capsys):
    _, run = photo_run
    assert main(["head", str(run), "--blend", "0.5"]) != 0
    err = capsys.readouterr().err.strip()
    assert "needs a pretrained backbone" in err and len(err.splitlines()) == 1


def test_a_head_file_with_foreign_tensors_is_refused(lite0_run, tmp_path):
    import shutil

    from trainer.checkpoint import RunError

    _, run = lite0_run
    other = tmp_path / "run"
    shutil.copytree(run, other)
    head = load_file(str(other / HEAD_WEIGHTS))
    head["decoder.out.weight"] = torch.zeros(3)
    save_file(head, str(other / HEAD_WEIGHTS))
    with pytest.raises(RunError, match="not a head of this network"):
        load_model(other)
