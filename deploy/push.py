"""`deploy push (--kiosk ID | --group NAME) --manifest-url URL`: install a release.

Publishes ``{schema, command_id, manifest_url, signature, issued_at}`` on
``kiosk/{id}/cmd/update`` at QoS 1 for each target kiosk. The signature is
read from --signature-file, or fetched from ``manifest.sig`` beside the
manifest URL. Progress comes back on ``kiosk/{id}/update/status``; `--wait`
follows it until each kiosk reports active or rejected.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy import fleet
from edge_runtime.update.commands import make_update_command
from edge_runtime.update.fetch import Budget, fetch_bytes
from edge_runtime.update.urls import resolve_url
from models.bundle import SIGNATURE
from models.errors import ConfigError
from models.signing import decode_signature


def add_arguments(p: argparse.ArgumentParser) -> None:
    fleet.add_target_arguments(p)
    p.add_argument("--manifest-url", required=True, help="http(s) URL of the release's manifest.json")
    p.add_argument("--signature-file", type=Path, default=None,
                   help="manifest.sig (default: fetched from beside the manifest URL)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="follow update/status for up to S seconds and report each kiosk's result")
    fleet.add_broker_arguments(p)


def _signature(args: argparse.Namespace) -> str:
    if args.signature_file is not None:
        try:
            text = args.signature_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{args.signature_file}: cannot read ({exc.strerror})") from None
    else:
        url = resolve_url(args.manifest_url, SIGNATURE)
        text = fetch_bytes(url, 1024, Budget.start(args.timeout))
    decode_signature(text.strip())  # a clear error here beats a rejection on every kiosk
    return text.decode("ascii").strip()


def run(args: argparse.Namespace) -> int:
    resolve_url(args.manifest_url, args.manifest_url)
    sig = _signature(args)
    client = fleet.connect(args, "deploy-push")
    try:
        return fleet.send_and_follow(
            client, fleet.resolve_targets(args, client), "update",
            lambda: make_update_command(args.manifest_url, sig), timeout=args.timeout,
            wait_s=args.wait, success="active")
    finally:
        fleet.close(client)
