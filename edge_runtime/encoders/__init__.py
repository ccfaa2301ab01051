"""Encoder backends behind one small interface (``EncoderBackend``).

``OnnxEncoder`` is imported lazily so that importing the package costs
nothing until a backend is used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_runtime.encoders.base import EncoderBackend, check_batch

if TYPE_CHECKING:
    from edge_runtime.encoders.onnx_backend import OnnxEncoder

__all__ = ["EncoderBackend", "OnnxEncoder", "check_batch"]


def __getattr__(name: str):
    if name == "OnnxEncoder":
        from edge_runtime.encoders.onnx_backend import OnnxEncoder

        return OnnxEncoder
    raise AttributeError(name)
