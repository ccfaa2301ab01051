"""--recon-share: the decoder reconstructs only the first share of each batch."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from trainer_helpers import fit, metrics

from models.netconfig import SCRATCH_INPUT, NetConfig
from models.network import AutoEncoder
from trainer.cli import main
from trainer.loop import LoopConfig, TrainModule, recon_count
from trainer.losses import reconstruction

LITE0_TINY = ["--backbone", "lite0", "--size", "32", "--embedding-size", "16", "--no-progress", "--log-every", "0",
              "--batch-size", "4"]


@pytest.mark.parametrize("n,share,k", [(64, 0.25, 16), (64, 1.0, 64), (8, 0.5, 4), (4, 0.25, 2), (3, 0.25, 2),
                                       (1, 0.01, 1), (10, 0.25, 2), (14, 0.25, 4)])
def test_recon_count(n, share, k):
    assert recon_count(n, share) == k


def _module(share: float) -> TrainModule:
    torch.manual_seed(0)
    net = NetConfig(backbone="scratch", width=8, depth=2, embedding_size=16,
                    input=SCRATCH_INPUT.model_copy(update={"size": 32}))
    cfg = replace(LoopConfig(), recon_share=share, w_metric=0.0)
    return TrainModule(AutoEncoder(net), None, cfg).eval()


def test_only_the_first_share_of_the_batch_is_reconstructed():
    m = _module(0.25)
    g = torch.Generator().manual_seed(1)
    v1, v2, clean = (torch.randn(8, 3, 32, 32, generator=g) for _ in range(3))  # 0.25 of 8: 2
    labels = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        loss = m(v1, v2, clean, labels)["loss_recon"]
        expect = reconstruction(m.model.decoder(m.model.encoder.feature_map(v1[:2])), clean[:2])
        assert loss == pytest.approx(float(expect), rel=1e-5)
        other = clean.clone()
        other[2:] += 5.0  # targets of photos the decoder skips: no effect
        assert m(v1, v2, other, labels)["loss_recon"] == pytest.approx(float(loss), rel=1e-6)
        other[:2] += 5.0
        assert m(v1, v2, other, labels)["loss_recon"] > loss + 1.0
    everything = _module(1.0)
    with torch.no_grad():
        full = everything(v1, v2, clean, labels)["loss_recon"]
        expect = reconstruction(everything.model.decoder(everything.model.encoder.feature_map(v1)), clean)
    assert full == pytest.approx(float(expect), rel=1e-5)


@pytest.mark.parametrize("backbone,objective,share,held", [("lite0", "default", 0.25, 0.0), ("lite0", "ae", 1.0, 0.0),
                                                            ("scratch", "default", 1.0, 0.05)])
def test_default_share_and_hold_out_are_recorded(tiny_catalogue, tmp_path, backbone, objective, share, held):
    out = tmp_path / backbone
    flags = ["--epochs", "1", "--objective", objective]
    if backbone == "lite0":
        code = main(["fit", str(tiny_catalogue), "--out", str(out), *LITE0_TINY, *flags])
    else:
        code = fit(tiny_catalogue, out, *flags)
    assert code == 0
    loop = json.loads((out / "config.json").read_text())["train"]["loop"]
    assert (loop["recon_share"], loop["val_fraction"]) == (share, held)
    vals = [m for m in metrics(out) if m["kind"] == "val"]
    assert bool(vals) == (held > 0)  # lite0 trains on every photo: nothing held out, nothing validated


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "nan"])
def test_bad_share_is_one_line(tiny_catalogue, tmp_path, capsys, value):
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, "--epochs", "1", "--recon-share", value) == 2
    assert "--recon-share must be in (0, 1]" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()
