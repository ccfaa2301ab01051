"""The objective's terms against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import cosine_margin_loss


def _cos(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(6, 5, generator=g) * 2 - 1


def test_cosine_margin_is_cross_entropy_of_scaled_margin_logits():
    cos, labels = _cos(), torch.tensor([0, 1, 2, 3, 4, 0])
    want = F.cross_entropy(10.0 * (cos - 0.3 * F.one_hot(labels, 5)), labels)
    assert cosine_margin_loss(cos, labels, 10.0, 0.3, smoothing=0.0) == pytest.approx(float(want), rel=1e-6)


def test_unlabelled_rows_are_ignored_and_all_unlabelled_is_zero():
    cos, labels = _cos(), torch.tensor([0, -1, 2, -1, 4, -1])
    keep = labels >= 0
    assert cosine_margin_loss(cos, labels) == pytest.approx(float(cosine_margin_loss(cos[keep], labels[keep])))
    assert float(cosine_margin_loss(cos, torch.full((6,), -1))) == 0.0


def test_cutmix_loss_weights_both_labels_by_area():
    cos, a, b = _cos(1), torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 2, 3, 4, 0, 1])
    mixed = cosine_margin_loss(cos, a, labels_b=b, lam=0.7)
    assert float(mixed) == pytest.approx(0.7 * float(cosine_margin_loss(cos, a)) + 0.3 * float(cosine_margin_loss(cos, b)),
                                         rel=1e-6)
    assert float(cosine_margin_loss(cos, a, labels_b=b, lam=1.0)) == pytest.approx(float(cosine_margin_loss(cos, a)))
