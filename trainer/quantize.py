"""INT8 encoders: ONNX Runtime static quantization, calibrated on catalogue photos.

The result is a QDQ graph (QuantizeLinear/DequantizeLinear around each
convolution) with symmetric scales and zero points of 0, per output channel
for weights: the form TensorRT 8.5 and 10 build as explicitly quantized INT8,
and that ONNX Runtime runs with its integer kernels on a CPU. Calibration
takes photos of the catalogue through the shared preprocessing, exactly what
the device feeds the encoder. The final projection and L2 normalisation stay
in float: they are a tiny part of the work and carry the embedding's geometry.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.preprocess import PreprocessSpec, preprocess

__all__ = ["quantize_int8", "DEFAULT_CALIBRATION_IMAGES", "CALIBRATION_PASS", "pass_size"]

DEFAULT_CALIBRATION_IMAGES = 256


# Images per calibration pass: ONNX Runtime's histogram calibrators keep every
# activation of a pass in memory before binning it (256 images at 224 px
# peaked at 16 GB); in passes of this many the histograms are merged instead.
CALIBRATION_PASS = 16


class _Reader:
    """Feeds calibration images one at a time (ORT's CalibrationDataReader
    protocol), within the range ORT sets for each pass (``set_range``)."""

    def __init__(self, images: Sequence[np.ndarray], spec: PreprocessSpec, input_name: str) -> None:
        self._images = list(images)
        self.spec, self.input_name = spec, input_name
        self._pos, self._end = 0, len(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pos, self._end = start_index, min(end_index, len(self._images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        self._pos += 1
        return {self.input_name: preprocess(self._images[self._pos - 1], self.spec)[None]}


def pass_size(n: int, most: int | None = None) -> int:
    """The largest divisor of ``n`` up to ``most`` (default CALIBRATION_PASS;
    ORT needs passes of equal size)."""
    most = CALIBRATION_PASS if most is None else most
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0) if n > 0 else 1


def quantize_int8(onnx_in: Path, onnx_out: Path, images: Sequence[np.ndarray], spec: PreprocessSpec,
                  input_name: str = "input") -> None:
    """Write the INT8 QDQ version of ``onnx_in`` to ``onnx_out``, calibrated on ``images`` (BGR)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = onnx.load(str(onnx_in))
    keep_float = [n.name for n in src.graph.node if n.op_type in ("Gemm", "ReduceL2", "Div", "MatMul")]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(onnx_in), str(pre), skip_optimization=True)
        # ONNX Runtime's calibrator prints its progress; export's output stays ours.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(pre), str(onnx_out), _Reader(images, spec, input_name),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
                            nodes_to_exclude=keep_float,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "CalibPercentile": 99.99,
                                           # despite its name, ORT's loop of calibration passes
                                           # for every method
                                           "CalibStridedMinMax": pass_size(len(images))})
    out = onnx.load(str(onnx_out))
    onnx.helper.set_model_props(out, {p.key: p.value for p in src.metadata_props} | {"kiosk.precision": "int8"})
    onnx.save(out, str(onnx_out))
