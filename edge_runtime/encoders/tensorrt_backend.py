"""TensorRT encoder backend (Jetson: JetPack 6 = TensorRT 10, JetPack 5 = 8.5).

Follows NVIDIA's python samples (samples/python/common_runtime.py): page-locked
host buffers and device buffers per I/O tensor, one CUDA stream, async
host->device copy, enqueue, async device->host copy, stream synchronise.
TensorRT 10 uses the name-based API (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); TensorRT 8.x uses bindings and ``execute_async_v2``.

Only ``select.open_encoder`` creates this, and only for an engine whose cache
key matches this device (engines are executable artifacts).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_runtime.encoders.base import check_batch
from models.errors import BundleError
from models.preprocess import PreprocessSpec

__all__ = ["TensorRTEncoder", "DeviceBuffer"]

log = logging.getLogger(__name__)


class DeviceBuffer:
    """A page-locked host array and a device allocation of the same size."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        import pycuda.driver as cuda

        self.host = cuda.pagelocked_empty(int(np.prod(shape)), dtype)
        self.device = cuda.mem_alloc(self.host.nbytes)

    def free(self) -> None:
        self.device.free()


class TensorRTEncoder:
    """An ``EncoderBackend`` over a serialized TensorRT engine (one input, one output)."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, spec: PreprocessSpec, embedding_size: int,
                 precision: str = "fp16") -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        self.precision = precision   # what a remote update must build for this kiosk

        cuda.init()
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        try:
            self._setup(trt, cuda, Path(engine_path), spec, embedding_size)
        finally:
            self._ctx.pop()

    def _setup(self, trt, cuda, path: Path, spec: PreprocessSpec, embedding_size: int) -> None:
        self.path, self.spec, self.embedding_size = path, spec, int(embedding_size)
        self._trt10 = int(trt.__version__.split(".")[0]) >= 10
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{path}: TensorRT could not deserialise the engine")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = self._io_names(trt)
        if len(names["in"]) != 1 or len(names["out"]) != 1:
            raise BundleError(f"{path}: engine has {names}, expected one input and one output")
        self._in, self._out = names["in"][0], names["out"][0]
        lo, _opt, hi = self._profile_shape()
        self.max_batch = int(hi[0])
        self.min_batch = int(lo[0])
        s = spec.size
        self._bufs = {self._in: DeviceBuffer((self.max_batch, 3, s, s), np.float32),
                      self._out: DeviceBuffer((self.max_batch, self.embedding_size), np.float32)}

    # ---- TensorRT 10 / 8.x differences, each in one place
    def _io_names(self, trt) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"in": [], "out": []}
        if self._trt10:
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                mode = self.engine.get_tensor_mode(name)
                out["in" if mode == trt.TensorIOMode.INPUT else "out"].append(name)
        else:
            for i in range(self.engine.num_bindings):
                name = self.engine.get_binding_name(i)
                out["in" if self.engine.binding_is_input(i) else "out"].append(name)
        return out

    def _profile_shape(self) -> tuple:
        if self._trt10:
            return self.engine.get_tensor_profile_shape(self._in, 0)
        return self.engine.get_profile_shape(0, self.engine.get_binding_index(self._in))

    def _run(self, n: int) -> None:
        s = self.spec.size
        bi, bo = self._bufs[self._in], self._bufs[self._out]
        if self._trt10:
            self.context.set_input_shape(self._in, (n, 3, s, s))
            self.context.set_tensor_address(self._in, int(bi.device))
            self.context.set_tensor_address(self._out, int(bo.device))
            ok = self.context.execute_async_v3(stream_handle=self.stream.handle)
        else:
            i_in = self.engine.get_binding_index(self._in)
            i_out = self.engine.get_binding_index(self._out)
            self.context.set_binding_shape(i_in, (n, 3, s, s))
            bindings = [0] * self.engine.num_bindings
            bindings[i_in], bindings[i_out] = int(bi.device), int(bo.device)
            ok = self.context.execute_async_v2(bindings=bindings, stream_handle=self.stream.handle)
        if not ok:
            raise RuntimeError(f"{self.path}: TensorRT execution failed")

    # ---- EncoderBackend
    def encode(self, batch: np.ndarray) -> np.ndarray:
        import pycuda.driver as cuda

        batch = check_batch(batch, self.spec)
        out = np.empty((len(batch), self.embedding_size), dtype=np.float32)
        bi, bo = self._bufs[self._in], self._bufs[self._out]
        self._ctx.push()
        try:
            for start in range(0, len(batch), self.max_batch):
                chunk = batch[start:start + self.max_batch]
                n = len(chunk)
                if n < self.min_batch:  # pad to the profile's minimum
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_batch - n, 0)])
                m = len(chunk)
                bi.host[: chunk.size] = chunk.ravel()
                cuda.memcpy_htod_async(bi.device, bi.host, self.stream)
                self._run(m)
                cuda.memcpy_dtoh_async(bo.host, bo.device, self.stream)
                self.stream.synchronize()
                out[start:start + n] = bo.host[: m * self.embedding_size].reshape(m, -1)[:n]
        finally:
            self._ctx.pop()
        return out

    def warmup(self) -> None:
        s = self.spec.size
        for n in sorted({1, self.max_batch}):
            self.encode(np.zeros((n, 3, s, s), dtype=np.float32))

    def close(self) -> None:
        if getattr(self, "_bufs", None):
            self._ctx.push()
            try:
                for b in self._bufs.values():
                    b.free()
            finally:
                self._ctx.pop()
            self._bufs = {}
            self.context = None
            self.engine = None
            self._ctx.detach()

    def __repr__(self) -> str:
        return f"TensorRTEncoder({self.path}, max_batch={getattr(self, 'max_batch', '?')})"
