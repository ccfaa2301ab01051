"""`edge-runtime build-engine BUNDLE_DIR`: compile the bundle's ONNX encoder to a
TensorRT engine for this device (see encoders/engine_build.py)."""

from __future__ import annotations

import argparse
import logging

from edge_runtime.encoders.select import PRECISIONS, EngineKey, engine_paths, probe_device
from models.bundle import verify_bundle
from models.errors import KioskError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle_dir", help="bundle folder (the engine goes into BUNDLE_DIR/engines/)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="int8 calibrates on the bundle's probe images (error if it has none)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="largest batch the engine accepts (profile: min 1, opt = max = this)")
    p.add_argument("--workspace-mb", type=int, default=1024)
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a matching engine exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not 1 <= args.max_batch <= 256:
        raise KioskError(f"--max-batch: {args.max_batch} is not in 1..256")
    bundle = Path(args.bundle_dir)
    manifest = verify_bundle(bundle)
    device, why = probe_device()
    if device is None:
        raise KioskError(f"cannot build a TensorRT engine here: {why}")
    from edge_runtime.encoders.engine_build import build_engine, engine_precision

    precision = engine_precision(manifest, args.precision)
    engine, _ = engine_paths(bundle, EngineKey.for_device(manifest.encoder.sha256, device, precision))
    if engine.is_file() and not args.rebuild:
        print(f"{engine} already exists (use --rebuild to build again)")
        return 0
    path = build_engine(bundle, manifest, device, precision, args.max_batch, args.workspace_mb)
    print(path)
    return 0
