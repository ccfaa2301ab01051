"""`deploy` command line: one module per subcommand (see models.cli_util)."""

from __future__ import annotations

from collections.abc import Sequence

from edge_runtime import __version__
from models.cli_util import run_cli

COMMANDS = {
    "keygen": ("deploy.keys", "make an Ed25519 signing key pair"),
    "sign": ("deploy.sign", "sign a bundle's manifest (detached signature)"),
    "serve": ("deploy.serve", "serve a folder of releases over HTTP"),
    "push": ("deploy.push", "tell kiosks to install a signed release"),
    "rollback": ("deploy.rollback", "tell a kiosk to return to its previous bundle"),
    "revoke": ("deploy.revoke", "retire releases fleet-wide (signed revocation)"),
    "status": ("deploy.status", "table of the fleet's kiosks from their retained status"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("deploy", "Fleet tools for kiosk bundles.", COMMANDS, argv, version=__version__)


if __name__ == "__main__":
    raise SystemExit(main())
