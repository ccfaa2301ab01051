"""`edge-runtime` command line: one module per subcommand (see models.cli_util)."""

from __future__ import annotations

from collections.abc import Sequence

from edge_runtime import __version__
from models.cli_util import run_cli

COMMANDS = {
    "run": ("edge_runtime.cmd_run", "run the kiosk: camera -> encoder -> index -> MQTT events"),
    "match": ("edge_runtime.cmd_match", "match image files against a bundle"),
    "enroll": ("edge_runtime.cmd_enroll", "add items or photos to a bundle without retraining"),
    "build-engine": ("edge_runtime.cmd_build_engine", "compile the bundle's ONNX encoder to TensorRT"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("edge-runtime", "Kiosk product recognition runtime.", COMMANDS, argv, version=__version__)


if __name__ == "__main__":
    raise SystemExit(main())
