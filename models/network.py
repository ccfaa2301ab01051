"""Encoders and decoder (torch). Only the trainer imports this module; the
device runs the exported ONNX encoder.

Two encoders share one interface (``feature_map`` -> ``embed`` -> L2
normalisation, so cosine similarity is a dot product and Annoy's angular
metric applies):

- ``Lite0Encoder`` (``backbone="lite0"``): EfficientNet-Lite0 (models.lite0)
  cut at ``cfg.cut``, started from its ImageNet weights (trainer.pretrained),
  global pooling and a linear projection to the embedding.
- ``ScratchEncoder`` (``backbone="scratch"``): a stem conv, then ``depth``
  stages of (stride-2 conv, residual blocks), pooling and a projection, from
  random weights: for catalogues where no pretrained model fits.

Decoder: from the encoder's feature map back to the clean image at half the
input resolution. Half resolution because on a 2-core CPU a full-resolution
decoder cost as much as the whole scratch encoder (0.26 s vs 0.14 s per
64-image batch at 64 px) while the reconstruction term only has to carry
colour and layout, not pixel detail.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.lite0 import Lite0
from models.netconfig import NetConfig

__all__ = ["Encoder", "ScratchEncoder", "Lite0Encoder", "Decoder", "AutoEncoder", "build_encoder", "gem",
           "GEM_EPS"]

GEM_EPS = 1e-6  # floor under the feature map before its power (ReLU output: zeros are common)


def gem(fmap: torch.Tensor, power: float) -> torch.Tensor:
    """Generalised-mean pooling of (N, C, H, W) to (N, C): ``mean(x ** p) ** (1 / p)``
    per channel (Radenovic et al., TPAMI 2019). p = 1 is the average; a larger
    p weighs each channel's strongest places more. In ONNX: Clip, Pow,
    ReduceMean, Pow, Flatten."""
    if power == 1.0:
        return fmap.mean(dim=(2, 3))
    # keepdim, then flatten: ReduceMean + Flatten in ONNX, no Squeeze
    return fmap.clamp(min=GEM_EPS).pow(power).mean(dim=(2, 3), keepdim=True).pow(1.0 / power).flatten(1)


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Encoder(nn.Module):
    """The interface both encoders implement."""

    cfg: NetConfig
    proj: nn.Linear
    # Training pools by the average; a whitened head may be fitted on another
    # pooling (trainer/whiten.py), and trainer.checkpoint sets it with the head.
    pool_power: float = 1.0

    @property
    def feature_channels(self) -> int:
        raise NotImplementedError

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        """The vector the projection maps to the embedding (trainer.whiten fits on it)."""
        return gem(fmap, self.pool_power)

    def embed(self, fmap: torch.Tensor) -> torch.Tensor:
        """Un-normalised embedding from a feature map (for losses that want it)."""
        return self.proj(self.pooled(fmap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.feature_map(x)), dim=1, eps=1e-12)


class ScratchEncoder(Encoder):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = cfg.stage_channels()
        layers: list[nn.Module] = [_conv_bn(3, chans[0], stride=cfg.stem_stride)]
        cin = chans[0]
        for c in chans:
            layers.append(_conv_bn(cin, c, stride=2))
            layers.extend(_Residual(c) for _ in range(cfg.blocks_per_stage))
            cin = c
        self.features = nn.Sequential(*layers)
        # Soft colour histogram: each pixel is softly assigned to one of K learned
        # colour prototypes (a 1x1 conv + softmax); the mean over the image is a
        # K-bin histogram, invariant to where the colours are.
        self.colour = nn.Conv2d(3, cfg.colour_bins, 1) if cfg.colour_bins else None
        pooled = cin + cfg.colour_bins
        self.head = _conv_bn(pooled, cfg.head_channels, k=1) if cfg.head_channels else None
        self.proj = nn.Linear(cfg.head_channels or pooled, cfg.embedding_size)

    @property
    def feature_channels(self) -> int:
        return self.cfg.stage_channels()[-1] + self.cfg.colour_bins

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Conv features (N, C, h, w), with the colour histogram appended as K
        constant channels when enabled, so global pooling yields both."""
        f = self.features(x)
        if self.colour is None:
            return f
        # at a quarter of the resolution: 16x cheaper, and colour statistics barely change
        small = F.avg_pool2d(x, 4) if min(x.shape[2], x.shape[3]) >= 16 else x
        hist = torch.softmax(self.colour(small), dim=1).mean(dim=(2, 3), keepdim=True) * self.cfg.colour_bins
        return torch.cat([f, hist.expand(-1, -1, f.shape[2], f.shape[3])], dim=1)

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            fmap = self.head(fmap)
        return super().pooled(fmap)


class Lite0Encoder(Encoder):
    """EfficientNet-Lite0 cut at ``cfg.cut``, pooled and projected. Its weights
    start random here; trainer.pretrained loads the ImageNet ones."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Lite0(cut=cfg.cut, classifier=False)
        self.proj = nn.Linear(self.backbone.channels, cfg.embedding_size)

    @property
    def feature_channels(self) -> int:
        return self.backbone.channels

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)


def build_encoder(cfg: NetConfig) -> Encoder:
    return Lite0Encoder(cfg) if cfg.backbone == "lite0" else ScratchEncoder(cfg)


class Decoder(nn.Module):
    """Feature map (C, s/stride) -> image (3, s/2) in the input's normalised space
    (scratch with ``stem_stride`` 2: s/4; the loss resizes the target).

    A 1x1 conv, then upsamplings by 2 (nearest neighbour), each followed by a
    3x3 conv that halves the channels: lite0 from 128 down to 16 channels,
    scratch mirroring its encoder's stages (at least 8)."""

    def __init__(self, cfg: NetConfig, in_channels: int) -> None:
        super().__init__()
        if cfg.backbone == "lite0":
            outs = [max(128 // 2**i, 16) for i in range(int(math.log2(cfg.stride())) - 1)]
        else:
            outs = [max(c // 2, 8) for c in list(reversed(cfg.stage_channels()))[:-1]]
        first = outs[0] if outs else in_channels
        layers: list[nn.Module] = [_conv_bn(in_channels, first, k=1)]
        cin = first
        for cout in outs:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_bn(cin, cout)]
            cin = cout
        layers.append(nn.Conv2d(cin, 3, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net(fmap)


class AutoEncoder(nn.Module):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg)
        self.decoder = Decoder(cfg, self.encoder.feature_channels)
        # Which projection the encoder carries: "whitened" once trainer.checkpoint
        # has loaded a fitted head (trainer/whiten.py) over the trained one.
        self.embedding_head = "projection"
        self.embedding_blend = 1.0  # share of the fine-tuned backbone in it (trainer/whiten.py)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (normalised embedding, raw embedding, reconstruction at half resolution)."""
        fmap = self.encoder.feature_map(x)
        raw = self.encoder.embed(fmap)
        return F.normalize(raw, dim=1, eps=1e-12), raw, self.decoder(fmap)
