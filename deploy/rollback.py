"""`deploy rollback (--kiosk ID | --group NAME)`: return to the previous bundle.

Publishes ``{schema: kiosk.rollback/1, command_id, issued_at}`` on
``kiosk/{id}/cmd/rollback`` (QoS 1). The kiosk switches its ``current``
release back to ``previous`` (kept for this) and hot-swaps the matcher; the
result ("rolled_back" or "rejected") comes on ``kiosk/{id}/update/status``.
"""

from __future__ import annotations

import argparse

from deploy import fleet
from edge_runtime.update.commands import make_rollback_command


def add_arguments(p: argparse.ArgumentParser) -> None:
    fleet.add_target_arguments(p)
    fleet.add_broker_arguments(p)


def run(args: argparse.Namespace) -> int:
    client = fleet.connect(args, "deploy-rollback")
    try:
        for kiosk in fleet.resolve_targets(args, client):
            payload = make_rollback_command()
            fleet.publish_command(client, f"kiosk/{kiosk}/cmd/rollback", payload, args.timeout)
            print(f"{kiosk}: rollback sent (command {payload['command_id']})")
        return 0
    finally:
        fleet.close(client)
