"""The view pool: frozen stages computed once per pooled view, the rest trained."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from trainer_helpers import metrics, state

from trainer.cli import main
from trainer.pool import ViewPool, paste_box_t
from trainer.pretrained import load_lite0_state

LITE0_TINY = ["--backbone", "lite0", "--size", "32", "--embedding-size", "16", "--no-progress", "--log-every", "0",
              "--batch-size", "4"]


def test_pool_pairs_are_two_different_views_of_each_photo():
    feats = torch.arange(5 * 3, dtype=torch.bfloat16).reshape(5, 3, 1, 1, 1).expand(5, 3, 2, 2, 2).contiguous()
    pool = ViewPool(feats)
    rows = np.array([4, 0, 2])
    a, b = pool.pair(rows, np.random.default_rng(0))
    assert a.dtype == torch.float32 and a.shape == (3, 2, 2, 2)
    va, vb = a[:, 0, 0, 0] - torch.tensor(rows * 3.0), b[:, 0, 0, 0] - torch.tensor(rows * 3.0)
    assert ((va >= 0) & (va < 3) & (vb >= 0) & (vb < 3)).all() and (va != vb).all()
    a2, b2 = pool.pair(rows, np.random.default_rng(0))
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_paste_box_t_takes_the_partner_box():
    x = torch.stack([torch.full((2, 4, 4), float(v)) for v in (1, 2)])
    out = paste_box_t(x, torch.tensor([1, 0]), (1, 3, 0, 2, 0.75))
    assert (out[0, :, 1:3, 0:2] == 2).all() and (out[0, :, 0] == 1).all() and (x[0] == 1).all()


class _SlowFrozenPart(nn.Module):
    """Stands in for Lite0's frozen stages with a known pace: 0.1 s a chunk."""

    def frozen_part(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        return x[:, :1, :1, :1] * 1.0


def _chunks(n: int, views: int):
    """Two chunks per view; each photo's value is 10 * view + photo."""
    for v in range(views):
        for s in range(0, n, 2):
            yield s, v, torch.tensor([10.0 * v + i for i in range(s, min(n, s + 2))]).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("budget,views", [(None, 8), (0.75, 3), (0.01, 2)])
def test_pool_stops_at_the_last_view_its_time_budget_fits(budget, views):
    # 0.2 s a view: with 0.75 s, after 2 views (0.4 s) a third ends by 0.6 s, a fourth would not;
    # with a budget shorter than one view, still the two views a pair needs
    pool = ViewPool.build(_SlowFrozenPart(), _chunks(4, 8), 4, 8, torch.device("cpu"), None, budget)
    assert pool.views == views and pool.feats.shape == (4, views, 1, 1, 1)
    expect = torch.tensor([[10.0 * v + i for v in range(views)] for i in range(4)])
    assert torch.equal(pool.feats.float().reshape(4, views), expect)


def test_cached_training_keeps_frozen_stages_and_trains_the_rest(tiny_catalogue, tmp_path):
    out = tmp_path / "run"
    assert main(["fit", str(tiny_catalogue), "--out", str(out), *LITE0_TINY, "--freeze", "4",
                 "--cache-views", "2", "--epochs", "3"]) == 0
    assert state(out)["step"] == 9  # 3 epochs of the tiny catalogue's 12 photos (lite0 holds none out), batch 4
    pool = [m for m in metrics(out) if m["kind"] == "pool"]
    assert len(pool) == 1 and pool[0]["views"] == 2 and pool[0]["seconds"] >= 0
    assert state(out)["setup_s"] == pytest.approx(pool[0]["seconds"], abs=0.06)  # rounded to 0.01 and 0.1
    trained = load_file(str(out / "last.safetensors"))
    imagenet = load_lite0_state()
    frozen = "encoder.backbone._blocks.7._depthwise_conv.weight"  # stage 3's last block: frozen
    learnt = "encoder.backbone._blocks.8._depthwise_conv.weight"  # stage 4's first: trained
    assert torch.equal(trained[frozen], imagenet[frozen.removeprefix("encoder.backbone.")])
    assert torch.equal(trained["encoder.backbone._bn0.running_mean"], imagenet["_bn0.running_mean"])
    assert not torch.equal(trained[learnt], imagenet[learnt.removeprefix("encoder.backbone.")])


@pytest.mark.parametrize("flags,needle", [
    (["--cache-views", "2", "--freeze", "0"], "--cache-views needs --freeze"),
    (["--cache-views", "99", "--freeze", "3"], "--cache-views must be"),
])
def test_bad_pool_flags(tiny_catalogue, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    assert main(["fit", str(tiny_catalogue), "--out", str(out), *LITE0_TINY, "--epochs", "1", *flags]) == 2
    assert needle in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_validation_runs_the_frozen_stages_once_and_embeds_as_the_whole_network(tiny_catalogue):
    from models.netconfig import LITE0_INPUT, NetConfig
    from models.network import AutoEncoder
    from trainer.data import load_image_set
    from trainer.ddp import Dist
    from trainer.distort import clean_view
    from trainer.embed import embed_after_frozen, embed_uint8, frozen_outputs
    from trainer.loop import LoopConfig, Trainer

    torch.manual_seed(0)
    net = NetConfig(backbone="lite0", embedding_size=16, input=LITE0_INPUT.model_copy(update={"size": 64}))
    data = load_image_set(tiny_catalogue, net.input)
    idx = np.arange(len(data))
    tr = Trainer(AutoEncoder(net), data, idx[2:], idx[:2], LoopConfig(freeze=4), Dist(0, 1, torch.device("cpu")))
    enc = tr.model.encoder
    imgs = np.stack([clean_view(im, 64) for im in data.images[:6]])
    cached = frozen_outputs(enc, imgs, net.input)
    for _ in range(2):  # the trained stages change between validations; the cache stays right
        assert np.allclose(embed_after_frozen(enc, cached), embed_uint8(enc, imgs, net.input), atol=1e-5)
        with torch.no_grad():
            enc.backbone._blocks[-1]._project_conv.weight.mul_(1.5)
            enc.proj.weight.add_(0.1)
    calls = []
    real = enc.backbone.frozen_part
    enc.backbone.frozen_part = lambda x: calls.append(len(x)) or real(x)
    first = tr.validate()
    assert set(tr._val_frozen) == {"val", "gallery"} and len(calls) == 2
    assert tr.validate() == first and len(calls) == 2  # nothing new through the frozen stages
    with torch.no_grad():
        enc.proj.weight.mul_(-1.0)
    tr.validate()
    assert len(calls) == 2
