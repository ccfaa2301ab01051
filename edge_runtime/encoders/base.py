"""The encoder interface every backend implements (ONNX Runtime here,
TensorRT on a Jetson): preprocessed NCHW float32 in, L2-normalised embeddings
out. Kept tiny so the matcher, the pipeline and the tests can inject any
backend without patching."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from models.preprocess import PreprocessSpec

__all__ = ["EncoderBackend", "check_batch"]


@runtime_checkable
class EncoderBackend(Protocol):
    """What the matcher needs from an encoder.

    ``encode`` takes a float32 batch of shape (N, 3, S, S) prepared with
    ``models.preprocess`` and ``spec`` and returns (N, embedding_size) float32,
    L2-normalised rows. Batches larger than ``max_batch`` are split by the
    backend itself.
    """

    name: str
    spec: PreprocessSpec
    embedding_size: int
    max_batch: int

    def encode(self, batch: np.ndarray) -> np.ndarray: ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


def check_batch(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Return ``batch`` as contiguous float32 NCHW, or raise ValueError saying
    what shape was expected (a programming error, not a user one)."""
    s = spec.size
    if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
        raise ValueError(f"expected a (N, 3, {s}, {s}) batch, got {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)
