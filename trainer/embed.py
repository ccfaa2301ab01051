"""Encode images with a trained encoder (torch, in-process) for validation,
evaluation, clustering and classification. Files go through the shared
``models.preprocess`` exactly as on the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.catalogue import Entry, iter_images
from models.errors import CatalogueError
from models.preprocess import PreprocessSpec, preprocess, to_uint8_rgb

__all__ = ["embed_uint8", "embed_float", "EmbeddedSet", "embed_entries", "frozen_outputs", "embed_after_frozen"]


def _normalise(u8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(N,S,S,3) uint8 RGB -> (N,3,S,S) float, identical maths to models.preprocess."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=u8.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=u8.device).view(1, 3, 1, 1)
    x = u8.permute(0, 3, 1, 2).float() * (1.0 / 255.0)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def embed_float(encoder: torch.nn.Module, x: np.ndarray, device: str | torch.device = "cpu",
                batch: int = 256) -> np.ndarray:
    """(N,3,S,S) float32 preprocessed -> (N,D) float32 normalised embeddings."""
    was = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(x), batch):
        t = torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device)
        out.append(encoder(t.contiguous(memory_format=torch.channels_last)).float().cpu().numpy())
    encoder.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def embed_uint8(encoder: torch.nn.Module, imgs: np.ndarray, spec: PreprocessSpec,
                device: str | torch.device = "cpu", batch: int = 256) -> np.ndarray:
    """(N,S,S,3) uint8 RGB at the input size -> (N,D) float32 normalised embeddings."""
    was = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(imgs), batch):
        t = torch.from_numpy(np.ascontiguousarray(imgs[i:i + batch])).to(device)
        out.append(encoder(_normalise(t, spec)).float().cpu().numpy())
    encoder.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def frozen_outputs(encoder: torch.nn.Module, imgs: np.ndarray, spec: PreprocessSpec,
                   device: str | torch.device = "cpu", batch: int = 256) -> torch.Tensor:
    """(N,S,S,3) uint8 RGB -> the output of a Lite0 encoder's frozen stem and
    stages (fp32, on ``device``). Those stages never change during training,
    so photos encoded again and again (the in-run validation) run them once;
    ``embed_after_frozen`` does the rest, equal to ``embed_uint8``."""
    bb = encoder.backbone
    was = bb.training
    bb.eval()
    out = [bb.frozen_part(_normalise(torch.from_numpy(np.ascontiguousarray(imgs[i:i + batch])).to(device), spec))
           for i in range(0, len(imgs), batch)]
    bb.train(was)
    return torch.cat(out).float()


@torch.no_grad()
def embed_after_frozen(encoder: torch.nn.Module, h: torch.Tensor, batch: int = 256) -> np.ndarray:
    """``frozen_outputs`` -> (N,D) float32 normalised embeddings: the trained stages only."""
    was = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(h), batch):
        fmap = encoder.backbone.after_frozen(h[i:i + batch].contiguous(memory_format=torch.channels_last))
        out.append(torch.nn.functional.normalize(encoder.embed(fmap), dim=1, eps=1e-12).float().cpu().numpy())
    encoder.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass
class EmbeddedSet:
    entries: list[Entry]
    embeddings: np.ndarray  # (N, D)
    thumbs: np.ndarray  # (N, S, S, 3) uint8 RGB at the input size, for contact sheets

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.item_id if e.item_id is not None else "" for e in self.entries], dtype=object)


def embed_entries(encoder: torch.nn.Module, entries: Sequence[Entry], spec: PreprocessSpec,
                  device: str | torch.device = "cpu", what: str = "images") -> EmbeddedSet:
    """Decode (skipping unreadable files with a warning), preprocess and encode."""
    kept: list[Entry] = []
    xs: list[np.ndarray] = []
    thumbs: list[np.ndarray] = []
    for e, img in iter_images(list(entries)):
        kept.append(e)
        xs.append(preprocess(img, spec))
        thumbs.append(to_uint8_rgb(img, spec))
    if not kept:
        raise CatalogueError(f"no readable {what} among {len(entries)} files")
    emb = embed_float(encoder, np.stack(xs), device)
    return EmbeddedSet(kept, emb, np.stack(thumbs))
