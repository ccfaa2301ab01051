"""`deploy rollback (--kiosk ID | --group NAME)`: return to the previous bundle.

Publishes ``{schema: kiosk.rollback/1, command_id, issued_at}`` on
``kiosk/{id}/cmd/rollback`` (QoS 1). The kiosk switches its ``current``
release back to ``previous`` (kept for this) and hot-swaps the matcher; the
result ("rolled_back" or "rejected") comes on ``kiosk/{id}/update/status``;
``--wait`` follows it. The release left behind is retired: the kiosk's
version floor keeps it from being installed again (push a newer one).
"""

from __future__ import annotations

import argparse

from deploy import fleet
from edge_runtime.update.commands import make_rollback_command


def add_arguments(p: argparse.ArgumentParser) -> None:
    fleet.add_target_arguments(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="follow update/status for up to S seconds and report each kiosk's result")
    fleet.add_broker_arguments(p)


def run(args: argparse.Namespace) -> int:
    client = fleet.connect(args, "deploy-rollback")
    try:
        return fleet.send_and_follow(client, fleet.resolve_targets(args, client), "rollback",
                                     make_rollback_command, timeout=args.timeout,
                                     wait_s=args.wait, success="rolled_back")
    finally:
        fleet.close(client)
