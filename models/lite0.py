"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant for edge devices), in
torch, with the module names of the reference PyTorch port
(``efficientnet-lite-pytorch``) so its ImageNet state dict loads strictly.

Lite0 is EfficientNet-B0 without squeeze-excite, with ReLU6 instead of Swish,
and with stem and head left unscaled. Convolutions use TensorFlow's "same"
padding, which is asymmetric for stride-2 convolutions on even input sides
(one pixel more at the bottom/right): a network padded the PyTorch way sees
every later feature shifted by one pixel and its ImageNet accuracy collapses.
Stride-1 convolutions are symmetric, so only stride-2 ones carry an explicit
pad, and only when the input side makes it asymmetric.

Only the trainer imports this module (torch); the device runs the exported ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["STAGES", "CUTS", "Lite0", "SameConv", "tf_same_pads", "stage_blocks"]

# (expand ratio, kernel, stride, in, out, repeats): efficientnet_lite_builder.py
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM, HEAD, CLASSES = 32, 1280, 1000
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's decay 0.99 in PyTorch's convention

# Where the backbone may end: after stage N (its output channels), or the full
# network up to the 1x1 head convolution (1280 channels).
CUTS: dict[str, int] = {"stage4": 112, "stage5": 192, "stage6": 320, "head": HEAD}
_CUT_BLOCKS = {"stage4": sum(s[5] for s in STAGES[:5]), "stage5": sum(s[5] for s in STAGES[:6])}


def stage_blocks(stages: int) -> int:
    """Blocks in the first ``stages`` stages."""
    return sum(s[5] for s in STAGES[:stages])


def tf_same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same" for one spatial side."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding for any input size."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k == 1:
            return super().forward(x)
        (top, bottom), (left, right) = (tf_same_pads(int(x.shape[2]), k, s),
                                        tf_same_pads(int(x.shape[3]), k, s))
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, s, (top, left), 1, self.groups)
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project (no SE)."""

    def __init__(self, expand: int, k: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.drop_path = 0.0  # stochastic depth rate, set by Lite0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype) >= self.drop_path
            y = y * keep / (1.0 - self.drop_path)
        return x + y


class Lite0(nn.Module):
    """The whole classifier (``forward`` gives ImageNet logits) and, through
    ``features``, the backbone cut at ``cut`` (see CUTS)."""

    def __init__(self, cut: str = "head", drop_path: float = 0.0, classifier: bool = True) -> None:
        super().__init__()
        if cut not in CUTS:
            raise ValueError(f"unknown cut {cut!r}; one of {', '.join(CUTS)}")
        self.cut = cut
        self._conv_stem = SameConv(3, STEM, 3, 2)
        self._bn0 = _bn(STEM)
        blocks: list[MBConv] = []
        for expand, k, stride, cin, cout, repeats in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(expand, k, stride if r == 0 else 1, cin if r == 0 else cout, cout))
        n_blocks = _CUT_BLOCKS.get(cut, len(blocks))
        self._blocks = nn.ModuleList(blocks[:n_blocks])
        for i, b in enumerate(self._blocks):  # linearly rising with depth, as in the reference
            b.drop_path = drop_path * i / len(blocks)
        if cut == "head":
            self._conv_head = SameConv(STAGES[-1][4], HEAD, 1)
            self._bn1 = _bn(HEAD)
        self._fc = nn.Linear(HEAD, CLASSES) if classifier and cut == "head" else None
        self.frozen: int | None = None  # stem + this many blocks frozen (None: nothing)

    def freeze(self, n_blocks: int | None) -> None:
        """Keep the stem and the first ``n_blocks`` blocks at their weights:
        no gradients, BatchNorm statistics as loaded, and no backward pass
        through them (the forward runs under no_grad). None unfreezes."""
        self.frozen = None if n_blocks is None else max(0, min(n_blocks, len(self._blocks)))
        for i, mod in enumerate(self._frozen_modules(len(self._blocks))):
            for p in mod.parameters():
                p.requires_grad_(self.frozen is None or i >= 2 + self.frozen)
        self.train(self.training)

    def _frozen_modules(self, n: int) -> list[nn.Module]:
        return [self._conv_stem, self._bn0, *self._blocks[:n]]

    def train(self, mode: bool = True) -> Lite0:
        super().train(mode)
        if self.frozen is not None:
            for mod in self._frozen_modules(self.frozen):
                mod.eval()
        return self

    @property
    def channels(self) -> int:
        return CUTS[self.cut]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for b in self._blocks[start:stop]:
            x = b(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(x))) if self.cut == "head" else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen is None:
            return self.head(self.run_blocks(self.stem(x)))
        with torch.no_grad():
            x = self.run_blocks(self.stem(x), 0, self.frozen)
        return self.head(self.run_blocks(x, self.frozen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fc is None:
            raise RuntimeError("this Lite0 was built without its ImageNet classifier")
        return self._fc(self.features(x).mean(dim=(2, 3)))
