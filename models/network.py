"""Encoder and decoder (torch). Only the trainer imports this module; the
device runs the exported ONNX encoder.

Encoder: a stem conv, then ``depth`` stages of (stride-2 conv, residual
blocks), global average pooling, a linear projection and L2 normalisation, so
cosine similarity is a dot product and Annoy's angular metric applies.
Decoder: from the pre-pooling feature map back to the input image, for the
denoising reconstruction objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.netconfig import NetConfig

__all__ = ["Encoder", "Decoder", "AutoEncoder"]


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
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = cfg.stage_channels()
        layers: list[nn.Module] = [_conv_bn(3, chans[0], stride=1)]
        cin = chans[0]
        for c in chans:
            layers.append(_conv_bn(cin, c, stride=2))
            layers.extend(_Residual(c) for _ in range(cfg.blocks_per_stage))
            cin = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, cfg.embedding_size)

    @property
    def feature_channels(self) -> int:
        return self.cfg.stage_channels()[-1]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def embed(self, fmap: torch.Tensor) -> torch.Tensor:
        """Un-normalised embedding from a feature map (for losses that want it)."""
        return self.proj(fmap.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.feature_map(x)), dim=1, eps=1e-12)


class Decoder(nn.Module):
    """Feature map (C, s/2^depth) -> image (3, s), normalised space like the input."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        chans = list(reversed(cfg.stage_channels()))
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, [*chans[1:], max(chans[-1] // 2, 8)]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_bn(cin, cout)]
        layers.append(nn.Conv2d(layers[-1][0].out_channels, 3, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net(fmap)


class AutoEncoder(nn.Module):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (normalised embedding, raw embedding, reconstruction)."""
        fmap = self.encoder.feature_map(x)
        raw = self.encoder.embed(fmap)
        return F.normalize(raw, dim=1, eps=1e-12), raw, self.decoder(fmap)
