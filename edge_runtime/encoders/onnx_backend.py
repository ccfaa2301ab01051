"""ONNX Runtime encoder backend (CPU here; the CUDA provider when present).

The session's input and output shapes are checked against the bundle's
manifest when it opens, so an encoder for another input size or embedding
size is a BundleError naming the file, not a shape error on the first frame.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import numpy as np

from edge_runtime.encoders.base import check_batch
from models.errors import BundleError
from models.preprocess import PreprocessSpec

__all__ = ["OnnxEncoder", "read_onnx_metadata", "int8_kernels_exact"]

log = logging.getLogger(__name__)

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_kernels_exact(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's fused INT8 kernels compute an INT8 (QDQ) encoder
    as quantized. On x86-64 without VNNI they multiply u8 x s8 pairs into
    saturating int16 sums (VPMADDUBSW), and the sample INT8 encoder's
    embedding of its own probe photo came out at cosine 0.71 to the stored
    one on a 2-core AVX2 CPU; ARM's dot-product kernels and VNNI do not
    saturate. ``cpuinfo``/``machine`` default to this machine's."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False  # unknown x86: take the exact path
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
    return any(f in flags for f in _VNNI_FLAGS)


@functools.cache
def _this_cpu_int8_exact() -> bool:
    """int8_kernels_exact() for this machine, read once per process."""
    return int8_kernels_exact()


def _session(path: Path, threads: int | None, providers: list[str] | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    # Idle intra-op threads sleep instead of spinning: on a 2-core kiosk the
    # spinning threads took the cores from the capture thread and the frame
    # loop (every frame encoded, val-clip.mp4: 55 -> 80 frames/s with spinning off;
    # bench/runtime.py, README Benchmarks).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not _this_cpu_int8_exact():
        # Run Quantize/DequantizeLinear as written (float convolutions on
        # int8-rounded values) instead of fusing them into the saturating
        # integer kernels; a float encoder has no such nodes and is unchanged.
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: ONNX Runtime cannot load the encoder ({msg})") from None


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The model's metadata_props (what `trainer export` stored: input spec,
    embedding size, run id), read through ONNX Runtime so no torch or onnx
    package is needed."""
    sess = _session(Path(path), 1, ["CPUExecutionProvider"])
    return dict(sess.get_modelmeta().custom_metadata_map)


class OnnxEncoder:
    """An ``EncoderBackend`` over an ONNX Runtime session."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, spec: PreprocessSpec, embedding_size: int,
                 threads: int | None = None, providers: list[str] | None = None,
                 max_batch: int = 32) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"{self.path}: missing encoder")
        self.spec = spec
        self.embedding_size = int(embedding_size)
        self.max_batch = int(max_batch)
        self._sess = _session(self.path, threads, providers)
        self.providers = self._sess.get_providers()
        self._check_io()

    def _check_io(self) -> None:
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise BundleError(f"{self.path}: encoder has {len(ins)} inputs / {len(outs)} outputs, "
                              "expected 1 / 1")
        s = self.spec.size
        ishape, oshape = list(ins[0].shape), list(outs[0].shape)
        if len(ishape) != 4 or ishape[1:] != [3, s, s]:
            raise BundleError(f"{self.path}: encoder input {ins[0].name} has shape {ishape}, "
                              f"manifest says [N, 3, {s}, {s}]")
        if len(oshape) != 2 or oshape[1] != self.embedding_size:
            raise BundleError(f"{self.path}: encoder output {outs[0].name} has shape {oshape}, "
                              f"manifest says [N, {self.embedding_size}]")
        if ins[0].type != "tensor(float)" or outs[0].type != "tensor(float)":
            raise BundleError(f"{self.path}: encoder is not float32 in and out "
                              f"({ins[0].type} -> {outs[0].type})")
        # A fixed batch dimension (an int) limits what one run call may carry.
        if isinstance(ishape[0], int) and ishape[0] > 0:
            self.max_batch = ishape[0]
        self._in, self._out = ins[0].name, outs[0].name

    def encode(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch, self.spec)
        if len(batch) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        parts = [self._sess.run([self._out], {self._in: batch[i : i + self.max_batch]})[0]
                 for i in range(0, len(batch), self.max_batch)]
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def warmup(self) -> None:
        """Run one batch so the first real frame does not pay for allocations."""
        self.encode(np.zeros((1, 3, self.spec.size, self.spec.size), dtype=np.float32))

    def close(self) -> None:
        self._sess = None  # ORT frees the session when the last reference goes

    def __repr__(self) -> str:
        return f"OnnxEncoder({self.path}, providers={self.providers})"
