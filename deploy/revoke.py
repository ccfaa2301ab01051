"""`deploy revoke (--kiosk ID | --group NAME) --version N [--version M] --release-key KEY`:
retire releases fleet-wide.

Signs a revocation document (``{"schema": "kiosk.revocation/1", "revoked":
[N, M], "issued": ...}``) with the release key, exactly as `deploy sign`
signs a manifest, and publishes it on ``kiosk/{id}/cmd/revoke`` (QoS 1).
Each kiosk checks the signature against its pinned keys, adds the versions
to the revoked set it keeps in its bundle store (durably; a revocation is
never undone, replaying one changes nothing), refuses them from then on,
and if it runs one of them rolls back to its kept previous release (or, with
none, keeps serving and says ``active_revoked`` in its status). ``--wait``
follows the answers ("revoked" or "rejected") on ``update/status``.

A kiosk that is offline gets the command when it reconnects if the broker
kept its session (MQTT session expiry); otherwise send the revocation again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy import fleet
from edge_runtime.update.commands import make_revocation, make_revoke_command
from models.errors import ConfigError
from models.signing import encode_signature, key_id, load_private_key, sign


def add_arguments(p: argparse.ArgumentParser) -> None:
    fleet.add_target_arguments(p)
    p.add_argument("--version", type=int, action="append", required=True, metavar="N",
                   help="release version to revoke (repeatable)")
    p.add_argument("--release-key", type=Path, required=True,
                   help="the Ed25519 release key that signs releases (deploy keygen)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="follow update/status for up to S seconds and report each kiosk's result")
    fleet.add_broker_arguments(p)


def run(args: argparse.Namespace) -> int:
    if any(v < 1 for v in args.version):
        raise ConfigError(f"--version {min(args.version)}: release versions are >= 1")
    key = load_private_key(args.release_key)
    document = make_revocation(args.version)
    signature = encode_signature(sign(key, document))
    print(f"revocation of release(s) {', '.join(map(str, sorted(set(args.version))))} signed "
          f"with key {key_id(key.public_key())}", flush=True)
    client = fleet.connect(args, "deploy-revoke")
    try:
        return fleet.send_and_follow(client, fleet.resolve_targets(args, client), "revoke",
                                     lambda: make_revoke_command(document, signature),
                                     timeout=args.timeout, wait_s=args.wait, success="revoked")
    finally:
        fleet.close(client)
