"""ONNX -> TensorRT engine, on the device, into the bundle's engine cache.

Follows NVIDIA's documented builder flow: ``Builder`` -> explicit-batch
``INetworkDefinition`` -> ``OnnxParser`` -> ``IBuilderConfig`` (workspace
pool limit, FP16/INT8 flags, one optimisation profile min 1 / opt / max =
the batch sizes the pipeline uses, a persistent timing cache) ->
``build_serialized_network``. INT8 uses ``IInt8EntropyCalibrator2`` over the
bundle's probe images; asking for INT8 without them is an error (other tools
silently fall back to FP16 or random data, and users never notice).

The pure parts (what to calibrate with, where files go) are separate
functions so they are tested without a GPU.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from edge_runtime.encoders.select import DeviceInfo, EngineKey, engine_paths, write_sidecar
from models.bundle import ENGINE_DIR, Manifest, atomic_write_bytes, load_probes
from models.errors import KioskError
from models.images import read_image
from models.preprocess import preprocess_batch

__all__ = ["calibration_images", "calibration_batches", "build_engine", "EngineBuildError", "engine_precision"]

log = logging.getLogger(__name__)

TIMING_CACHE = "timing.cache"


class EngineBuildError(KioskError):
    """The engine could not be built (bad request, missing calibration data, parser errors)."""


def engine_precision(manifest: Manifest, requested: str) -> str:
    """The precision an engine for this bundle is built in: an INT8 (QDQ)
    encoder carries its own scales, so TensorRT builds it as explicit INT8
    whatever was asked; otherwise the request."""
    if manifest.encoder.precision == "int8" and requested != "int8":
        log.info("the encoder is quantized (INT8, QDQ): building an int8 engine, not %s", requested)
        return "int8"
    return requested


def calibration_images(bundle_dir: Path) -> list[Path]:
    """The bundle's probe images (representative catalogue photos)."""
    return [Path(bundle_dir) / p.file for p in load_probes(bundle_dir).probes
            if (Path(bundle_dir) / p.file).is_file()]


def calibration_batches(paths: list[Path], manifest: Manifest, batch: int) -> list[np.ndarray]:
    """Preprocessed NCHW float32 batches (the last one padded by repetition)."""
    if not paths:
        raise EngineBuildError("int8 needs calibration images and the bundle has no probe images "
                               "(probes.json); build with --precision fp16 instead")
    imgs = [read_image(p) for p in paths]
    out = []
    for i in range(0, len(imgs), batch):
        chunk = imgs[i:i + batch]
        chunk += [chunk[-1]] * (batch - len(chunk))
        out.append(preprocess_batch(chunk, manifest.input))
    return out


def _make_calibrator(trt, batches: list[np.ndarray], cache_file: Path):
    import pycuda.driver as cuda

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = batches
            self.i = 0
            self.device = cuda.mem_alloc(batches[0].nbytes)

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names):  # noqa: ARG002 - TensorRT's signature
            if self.i >= len(self.batches):
                return None
            cuda.memcpy_htod(self.device, np.ascontiguousarray(self.batches[self.i]))
            self.i += 1
            log.info("INT8 calibration batch %d/%d", self.i, len(self.batches))
            return [int(self.device)]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            atomic_write_bytes(cache_file, bytes(cache))

    return EntropyCalibrator()


def _progress_monitor(trt):
    """TensorRT >= 10 reports build phases; log them so a long build is visibly alive."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            log.info("build phase %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name, step) -> bool:
            return True  # True = keep building

        def phase_finish(self, phase_name) -> None:
            log.debug("build phase %s done", phase_name)

    return Progress()


def build_engine(bundle_dir: Path, manifest: Manifest, device: DeviceInfo, precision: str = "fp16",
                 max_batch: int = 8, workspace_mb: int = 1024) -> Path:
    """Build and cache an engine for this device; return its path."""
    import pycuda.driver as cuda

    cuda.init()
    ctx = cuda.Device(0).retain_primary_context()   # the calibrator allocates device memory
    ctx.push()
    try:
        return _build(bundle_dir, manifest, device, engine_precision(manifest, precision), max_batch,
                      workspace_mb)
    finally:
        ctx.pop()
        ctx.detach()


def _build(bundle_dir: Path, manifest: Manifest, device: DeviceInfo, precision: str,
           max_batch: int, workspace_mb: int) -> Path:
    import tensorrt as trt

    bundle_dir = Path(bundle_dir)
    key = EngineKey.for_device(manifest.encoder.sha256, device, precision)
    engine_path, sidecar = engine_paths(bundle_dir, key)
    cache_dir = bundle_dir / ENGINE_DIR
    try:
        cache_dir.mkdir(exist_ok=True)
        probe = cache_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise EngineBuildError(f"{cache_dir}: engine cache not writable ({exc.strerror})") from None
    explicit = manifest.encoder.precision == "int8"  # QDQ graph: scales inside, no calibration
    calib = None
    if precision == "int8" and not explicit:
        calib = calibration_batches(calibration_images(bundle_dir), manifest, min(max_batch, 8))

    logger = trt.Logger(trt.Logger.INFO)
    builder = trt.Builder(logger)
    trt10 = int(trt.__version__.split(".")[0]) >= 10
    flags = 0 if trt10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = bundle_dir / manifest.encoder.file
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    inp = network.get_input(0)
    s = manifest.input.size

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    timing_path = cache_dir / TIMING_CACHE
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, 3, s, s), (max_batch, 3, s, s), (max_batch, 3, s, s))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if calib is not None:
        config.int8_calibrator = _make_calibrator(trt, calib, cache_dir / f"{key.stem()}.calib")
        config.set_calibration_profile(profile)
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor

    log.info("building %s engine for %s sm%s (TensorRT %s); this can take minutes",
             precision, device.gpu_name, device.compute_capability, device.trt_version)
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build a {precision} engine "
                               "(see the log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    atomic_write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
    write_sidecar(sidecar, key, engine_path, max_batch=max_batch,
                  built_s=round(time.monotonic() - t0, 1))
    log.info("engine written: %s (%.1f s)", engine_path, time.monotonic() - t0)
    return engine_path
