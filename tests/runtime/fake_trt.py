"""Stand-ins for ``tensorrt`` and ``pycuda.driver`` (no GPU here), just
enough of NVIDIA's documented Python API to drive our TensorRT code paths:
device memory is a numpy array behind an integer "pointer", an "engine" runs
the bundle's real ONNX model with ONNX Runtime on whatever its input binding
points at, and the builder records what it was asked to build.

They check the calls the way TensorRT would (unknown tensor names, shapes
outside the profile, unbound addresses raise), so a wrong call order or a
wrong name in our code fails the test."""

from __future__ import annotations

import itertools
import json
import types

import numpy as np

# ---------------------------------------------------------------- pycuda.driver

_MEM: dict[int, np.ndarray] = {}
_ptrs = itertools.count(0x1000, 0x1000)


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.ptr = next(_ptrs)
        _MEM[self.ptr] = np.zeros(nbytes, np.uint8)
        self.freed = False

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:
        self.freed = True
        _MEM.pop(self.ptr, None)


class Stream:
    handle = 42
    synced = 0

    def synchronize(self) -> None:
        Stream.synced += 1


class _Ctx:
    depth = 0

    def push(self) -> None:
        _Ctx.depth += 1

    def pop(self) -> None:
        assert _Ctx.depth > 0, "pop without push"
        _Ctx.depth -= 1

    def detach(self) -> None:
        pass


class _Device:
    def __init__(self, i: int) -> None:
        assert i == 0

    def name(self) -> str:
        return "Fake Orin"

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def retain_primary_context(self) -> _Ctx:
        return _Ctx()


def _need_ctx() -> None:
    assert _Ctx.depth > 0, "CUDA call without a current context"


def _htod(dev: DeviceAllocation, host: np.ndarray, stream: Stream | None = None) -> None:
    _need_ctx()
    raw = np.ascontiguousarray(host).view(np.uint8).ravel()
    _MEM[int(dev)][: raw.size] = raw


def _dtoh(host: np.ndarray, dev: DeviceAllocation, stream: Stream | None = None) -> None:
    _need_ctx()
    raw = host.view(np.uint8).reshape(-1)
    raw[:] = _MEM[int(dev)][: raw.size]


def _mem_alloc(nbytes: int) -> DeviceAllocation:
    _need_ctx()
    return DeviceAllocation(nbytes)


driver = types.SimpleNamespace(
    init=lambda: None, Device=_Device, Stream=Stream, mem_alloc=_mem_alloc,
    pagelocked_empty=lambda n, dtype: np.zeros(n, dtype), memcpy_htod_async=_htod,
    memcpy_dtoh_async=_dtoh, memcpy_htod=_htod)


def device_array(ptr: int, dtype, shape) -> np.ndarray:
    n = int(np.prod(shape))
    return _MEM[ptr][: n * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


# ---------------------------------------------------------------- tensorrt

def make_tensorrt(version: str, onnx_path, size: int, dim: int, max_batch: int = 4):
    """A fake ``tensorrt`` module of ``version`` whose engines run ``onnx_path``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    trt10 = int(version.split(".")[0]) >= 10
    profile = ((1, 3, size, size), (max_batch, 3, size, size), (max_batch, 3, size, size))
    names = [in_name, out_name]
    built: dict = {}

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class Context:
        def __init__(self) -> None:
            self.shape = None
            self.addr: dict[str, int] = {}

        def _run(self) -> bool:
            _need_ctx()
            n = self.shape[0]
            assert profile[0][0] <= n <= profile[2][0] and self.shape[1:] == (3, size, size)
            x = device_array(self.addr[in_name], np.float32, self.shape)
            y = sess.run([out_name], {in_name: np.ascontiguousarray(x)})[0]
            device_array(self.addr[out_name], np.float32, (n, dim))[:] = y
            return True

        # TensorRT 10
        def set_input_shape(self, name, shape):
            assert trt10 and name == in_name
            self.shape = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            assert trt10 and name in names and ptr in _MEM
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            assert trt10 and stream_handle == Stream.handle
            return self._run()

        # TensorRT 8.x
        def set_binding_shape(self, index, shape):
            assert not trt10 and index == 0
            self.shape = tuple(shape)
            return True

        def execute_async_v2(self, bindings, stream_handle):
            assert not trt10 and stream_handle == Stream.handle and len(bindings) == 2
            self.addr = dict(zip(names, bindings, strict=True))
            return self._run()

    class Engine:
        num_io_tensors = 2
        num_bindings = 2

        def create_execution_context(self):
            return Context()

        def get_tensor_name(self, i):
            assert trt10
            return names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == in_name else TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name, index):
            assert trt10 and name == in_name and index == 0
            return profile

        def get_binding_name(self, i):
            assert not trt10
            return names[i]

        def binding_is_input(self, i):
            assert not trt10
            return i == 0

        def get_binding_index(self, name):
            assert not trt10
            return names.index(name)

        def get_profile_shape(self, index, binding):
            assert not trt10 and index == 0 and binding == 0
            return profile

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes):
            return Engine() if data.startswith(b"FAKE-ENGINE") else None

    class Logger:
        WARNING, INFO = 2, 3

        def __init__(self, level) -> None:
            pass

    # ---- builder side
    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            built["profile"] = (name, tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"TIMING:" + self.data

    class Config:
        def __init__(self) -> None:
            self.flags: set = set()
            self.int8_calibrator = None
            self.progress_monitor = None

        def set_memory_pool_limit(self, pool, size):
            built["workspace"] = size

        def create_timing_cache(self, data):
            built["timing_in"] = bytes(data)
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, p):
            built["profiles"] = built.get("profiles", 0) + 1

        def set_flag(self, flag):
            self.flags.add(flag)

        def set_calibration_profile(self, p):
            built["calibration_profile"] = True

    class Network:
        def get_input(self, i):
            return types.SimpleNamespace(name=in_name)

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags):
            built["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            built["flags"] = sorted(config.flags)
            cal = config.int8_calibrator
            if cal is not None:   # TensorRT pulls every batch, then writes the cache
                bs = cal.get_batch_size()
                batches = 0
                while (ptrs := cal.get_batch([in_name])) is not None:
                    assert device_array(ptrs[0], np.float32, (bs, 3, size, size)).shape[0] == bs
                    batches += 1
                built["calibration_batches"] = batches
                cal.write_calibration_cache(b"CALIB")
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building", None, 1)
                config.progress_monitor.step_complete("Building", 0)
                config.progress_monitor.phase_finish("Building")
            return b"FAKE-ENGINE" + json.dumps(built["profile"]).encode()

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.num_errors = 0

        def parse(self, data: bytes) -> bool:
            return data[:2] != b"XX"

        def get_error(self, i):
            return "bad"

    mod = types.SimpleNamespace(
        __version__=version, Logger=Logger, Runtime=Runtime, TensorIOMode=TensorIOMode,
        Builder=Builder, OnnxParser=OnnxParser, IInt8EntropyCalibrator2=IInt8EntropyCalibrator2,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8"),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0),
        built=built)
    if trt10:
        mod.IProgressMonitor = IProgressMonitor
    return mod
