"""The training objective as small pure tensor functions plus one head.

- ``reconstruction``: the denoising term, distorted view in, clean image out.
- ``CosineMarginHead`` + ``cosine_margin_loss``: a normalised-softmax (CosFace)
  classifier over the item ids; with weights and embeddings both on the unit
  sphere, the class weights act as learned item prototypes, so training it
  directly shapes the cosine geometry that retrieval uses.
- ``invariance``: two distorted views of one photo should embed alike
  (labelled or not), the denoising idea applied to the embedding.
- CutMix (batches made in trainer.loop): a box of the next photo is pasted
  into every view, and the classifier term weights both items by area.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["reconstruction", "invariance", "CosineMarginHead", "cosine_margin_loss", "OBJECTIVES"]

# objective -> default weights (recon, metric, invariance); flags override each.
OBJECTIVES: dict[str, tuple[float, float, float]] = {
    "default": (0.5, 1.0, 1.0),
    "ae": (1.0, 0.0, 0.0),
    "metric": (0.0, 1.0, 1.0),
}


def reconstruction(recon: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared error against the clean image resized to the decoder's output."""
    if clean.shape[-2:] != recon.shape[-2:]:
        clean = F.interpolate(clean, size=recon.shape[-2:], mode="area")
    return F.mse_loss(recon.float(), clean.float())


def invariance(e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the normalised embeddings of two views of one photo."""
    return (1.0 - (e1.float() * e2.float()).sum(dim=1)).mean()


class CosineMarginHead(nn.Module):
    """Unit-norm class prototypes; returns cosines (N, classes)."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)

    def forward(self, emb_normalised: torch.Tensor) -> torch.Tensor:
        return emb_normalised.float() @ F.normalize(self.weight, dim=1).t()


def cosine_margin_loss(cos: torch.Tensor, labels: torch.Tensor, scale: float = 16.0,
                       margin: float = 0.2, smoothing: float = 0.1, labels_b: torch.Tensor | None = None,
                       lam: float = 1.0) -> torch.Tensor:
    """CosFace: cross-entropy over ``scale * (cos - margin * onehot)``; rows with label < 0 are ignored.

    With ``labels_b`` (CutMix), the loss is ``lam`` times that of ``labels``
    plus ``1 - lam`` times that of ``labels_b``, each with its own margin."""
    if labels_b is not None and lam < 1.0:
        return (lam * cosine_margin_loss(cos, labels, scale, margin, smoothing)
                + (1.0 - lam) * cosine_margin_loss(cos, labels_b, scale, margin, smoothing))
    keep = labels >= 0
    if not bool(keep.any()):
        return cos.sum() * 0.0
    cos, labels = cos[keep], labels[keep]
    onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
    return F.cross_entropy(scale * (cos - margin * onehot), labels, label_smoothing=smoothing)
