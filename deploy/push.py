"""`deploy push (--kiosk ID | --group NAME) --manifest-url URL`: install a release.

Publishes ``{schema, command_id, manifest_url, signature, issued_at}`` on
``kiosk/{id}/cmd/update`` at QoS 1 for each target kiosk. The signature is
read from --signature-file, or fetched from ``manifest.sig`` beside the
manifest URL. Progress comes back on ``kiosk/{id}/update/status``; `--wait`
follows it until each kiosk reports active or rejected.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from deploy import fleet
from edge_runtime.update.commands import make_update_command
from edge_runtime.update.fetch import Budget, fetch_bytes
from edge_runtime.update.urls import resolve_url
from models.bundle import SIGNATURE
from models.errors import ConfigError, KioskError
from models.signing import decode_signature

FINAL = ("active", "rejected")


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
        targets = fleet.resolve_targets(args, client)
        results: dict[str, dict] = {}
        cond = threading.Condition()
        commands = {}
        if args.wait > 0:
            def on_message(c, userdata, msg):
                try:
                    body = json.loads(msg.payload)
                except ValueError:
                    return
                kiosk = msg.topic.split("/")[1]
                if isinstance(body, dict) and body.get("command_id") == commands.get(kiosk):
                    why = ": ".join(str(body[k]) for k in ("error", "reason") if body.get(k))
                    print(f"{kiosk}: {body.get('state')}" + (f" ({why})" if why else ""), flush=True)
                    if body.get("state") in FINAL:
                        with cond:
                            results[kiosk] = body
                            cond.notify_all()
            client.on_message = on_message
            client.subscribe([(f"kiosk/{k}/update/status", 1) for k in targets])
            time.sleep(0.2)  # let the subscription land before the first command
        for kiosk in targets:
            payload = make_update_command(args.manifest_url, sig)
            commands[kiosk] = payload["command_id"]
            fleet.publish_command(client, f"kiosk/{kiosk}/cmd/update", payload, args.timeout)
            print(f"{kiosk}: update sent (command {payload['command_id']})", flush=True)
        if args.wait <= 0:
            return 0
        deadline = time.monotonic() + args.wait
        with cond:
            while len(results) < len(targets) and time.monotonic() < deadline:
                cond.wait(0.2)
        missing = [k for k in targets if k not in results]
        for k in missing:
            print(f"{k}: no result within {args.wait:.0f} s (offline? see deploy status)")
        failed = [k for k, r in results.items() if r.get("state") != "active"]
        if failed or missing:
            raise KioskError(f"{len(failed)} kiosk(s) rejected the update, "
                             f"{len(missing)} did not answer")
        return 0
    finally:
        fleet.close(client)
