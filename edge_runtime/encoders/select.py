"""Which encoder backend runs, and the device-local TensorRT engine cache.

A TensorRT engine is executable code tied to one TensorRT version and one GPU
model, so the cache in ``BUNDLE_DIR/engines/`` is keyed by everything that
makes an engine valid here: the ONNX file's sha256, the TensorRT version, the
GPU name and compute capability, and the precision. The key is in the file
name (to see at a glance) and in a JSON sidecar with the engine's own sha256
(to check). An engine is only deserialised when its sidecar key equals this
device's key AND its bytes hash to the sidecar's sha256; otherwise the runtime
says why and falls back to ONNX Runtime (``auto``) or fails (``tensorrt``).

Everything here except ``probe_device`` runs without a GPU: the device info is
injected, so the tests cover keys, lookup and selection on any machine.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.bundle import ENGINE_DIR, Manifest, sha256_file
from models.errors import BundleError, KioskError

__all__ = ["DeviceInfo", "EngineKey", "engine_paths", "probe_device", "find_engine",
           "write_sidecar", "open_encoder", "PRECISIONS"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class DeviceInfo:
    trt_version: str
    gpu_name: str
    compute_capability: str   # "8.7"


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str

    @classmethod
    def for_device(cls, onnx_sha256: str, device: DeviceInfo, precision: str) -> EngineKey:
        if precision not in PRECISIONS:
            raise KioskError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
        return cls(onnx_sha256, device.trt_version, device.gpu_name, device.compute_capability,
                   precision)

    def stem(self) -> str:
        """File-name form: encoder-<onnx12>-trt<ver>-<gpu>-sm<cc>-<precision>."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower()[:40] or "gpu"
        cc = self.compute_capability.replace(".", "")
        return f"encoder-{self.onnx_sha256[:12]}-trt{self.trt_version}-{gpu}-sm{cc}-{self.precision}"


def engine_paths(bundle_dir: Path, key: EngineKey) -> tuple[Path, Path]:
    """(engine file, JSON sidecar) for ``key`` in the bundle's engine cache."""
    folder = Path(bundle_dir) / ENGINE_DIR
    return folder / f"{key.stem()}.engine", folder / f"{key.stem()}.json"


def write_sidecar(sidecar: Path, key: EngineKey, engine: Path, **extra: Any) -> None:
    from models.bundle import atomic_write_bytes

    body = {"key": asdict(key), "engine_sha256": sha256_file(engine), "engine_file": engine.name,
            **extra}
    atomic_write_bytes(sidecar, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


def probe_device() -> tuple[DeviceInfo | None, str]:
    """This machine's TensorRT version and GPU, or (None, why not)."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken CUDA install raising OSError
        return None, f"tensorrt does not import ({exc.__class__.__name__}: {exc})"
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return DeviceInfo(trt.__version__, dev.name(), f"{major}.{minor}"), ""
    except Exception as exc:
        return None, f"pycuda/CUDA unavailable ({exc.__class__.__name__}: {exc})"


def find_engine(bundle_dir: Path, manifest: Manifest, device: DeviceInfo,
                precisions: tuple[str, ...] = ("int8", "fp16", "fp32")) -> tuple[Path | None, str]:
    """The cached engine valid on ``device`` (preferring the first precision
    listed), or (None, a reason naming what did not match). Never opens an
    engine file beyond hashing it."""
    folder = Path(bundle_dir) / ENGINE_DIR
    if not folder.is_dir():
        return None, f"no engine cache in {folder}"
    reasons = []
    for precision in precisions:
        key = EngineKey.for_device(manifest.encoder.sha256, device, precision)
        engine, sidecar = engine_paths(bundle_dir, key)
        if not engine.is_file() or not sidecar.is_file():
            continue
        try:
            meta = json.loads(sidecar.read_text())
            stored = EngineKey(**meta["key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reasons.append(f"{sidecar.name}: unreadable sidecar ({exc})")
            continue
        if stored != key:
            diff = [f"{k} {getattr(stored, k)!r} != {getattr(key, k)!r}"
                    for k in asdict(key) if getattr(stored, k) != getattr(key, k)]
            reasons.append(f"{engine.name}: built for another device ({'; '.join(diff)})")
            continue
        if sha256_file(engine) != meta.get("engine_sha256"):
            reasons.append(f"{engine.name}: sha256 differs from its sidecar (altered)")
            continue
        return engine, ""
    others = sorted(p.name for p in folder.glob("*.engine"))
    if not reasons and others:
        reasons.append(f"engines present ({', '.join(others)}) are for another encoder, TensorRT "
                       f"{device.trt_version} or GPU {device.gpu_name} sm{device.compute_capability}")
    return None, "; ".join(reasons) or f"no engine in {folder}"


def open_encoder(bundle_dir: str | Path, manifest: Manifest, backend: str = "auto", *,
                 device: DeviceInfo | None = None, device_reason: str = "",
                 threads: int | None = None, max_batch: int = 8) -> Any:
    """An EncoderBackend for the bundle (see module docstring). ``device`` is
    probed when None; pass one (with ``device_reason`` when absent) in tests."""
    root = Path(bundle_dir)
    if backend not in ("auto", "onnxruntime", "tensorrt"):
        raise KioskError(f"backend: {backend!r} is not auto, onnxruntime or tensorrt")
    if backend != "onnxruntime":
        if device is None and not device_reason:
            device, device_reason = probe_device()
        engine, why = (None, device_reason) if device is None else find_engine(root, manifest, device)
        if engine is not None:
            from edge_runtime.encoders.tensorrt_backend import TensorRTEncoder

            log.info("encoder backend: tensorrt (%s)", engine.name)
            precision = engine.stem.rsplit("-", 1)[-1]   # the key's last field
            return TensorRTEncoder(engine, manifest.input, manifest.embedding_size,
                                   precision=precision)
        if backend == "tensorrt":
            raise BundleError(f"backend tensorrt: {why}; run `edge-runtime build-engine {root}`")
        log.warning("TensorRT not used: %s; falling back to ONNX Runtime", why)
    from edge_runtime.encoders.onnx_backend import OnnxEncoder

    enc = OnnxEncoder(root / manifest.encoder.file, manifest.input, manifest.embedding_size,
                      threads=threads, max_batch=max_batch)
    log.info("encoder backend: onnxruntime (%s)", ", ".join(getattr(enc, "providers", [])))
    return enc
