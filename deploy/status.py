"""`deploy status`: the fleet at a glance, from the kiosks' retained status.

Subscribes to ``kiosk/+/status`` for a bounded time (--wait), prints one row
per kiosk: online, what it runs (bundle version, the first 8 hex digits of
the encoder's and the index's sha256, backend and engine), its version floor,
groups, and the last update's result. Kiosks set these fields from the
bundle they serve at start and after every install or rollback, so the row
shows what runs, not what was asked for. ``--json`` prints the raw statuses.
"""

from __future__ import annotations

import argparse
import json

from deploy import fleet

COLUMNS = ("KIOSK", "ONLINE", "BUNDLE", "ENCODER", "INDEX", "BACKEND", "ENGINE", "FLOOR",
           "GROUPS", "LAST UPDATE", "STATUS AT")


def _last_update(s: dict) -> str:
    lu = s.get("last_update")
    if not isinstance(lu, dict):
        return "-"
    text = f"{lu.get('state', '?')}"
    if lu.get("bundle_version") is not None:
        text += f" v{lu['bundle_version']}"
    if lu.get("error"):
        text += f" [{lu['error']}]"
    if lu.get("reason"):
        reason = str(lu["reason"])
        text += f": {reason[:60]}{'...' if len(reason) > 60 else ''}"
    return text


def _short(sha: object) -> str:
    return str(sha)[:8] if isinstance(sha, str) and sha else "-"


def rows(statuses: dict[str, dict]) -> list[tuple[str, ...]]:
    out = []
    for kiosk in sorted(statuses):
        s = statuses[kiosk]
        online = s.get("online")
        version = str(s.get("bundle_version", "-")) + (" (revoked)" if s.get("active_revoked")
                                                       else "")
        out.append((kiosk, "yes" if online is True else "no" if online is False else "?",
                    version, _short(s.get("encoder_sha256")), _short(s.get("index_sha256")),
                    str(s.get("backend", "-")), str(s.get("engine") or "-"),
                    str(s.get("floor", "-")), ",".join(map(str, s.get("groups") or [])) or "-",
                    _last_update(s), str(s.get("ts", "-"))))
    return out


def format_table(statuses: dict[str, dict]) -> str:
    table = [COLUMNS, *rows(statuses)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in table)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=2.0, help="seconds to collect statuses (default 2)")
    p.add_argument("--json", action="store_true", help="print the statuses as one JSON object")
    fleet.add_broker_arguments(p)


def run(args: argparse.Namespace) -> int:
    client = fleet.connect(args, "deploy-status")
    try:
        statuses = fleet.read_statuses(client, wait_s=args.wait)
    finally:
        fleet.close(client)
    if args.json:
        print(json.dumps(statuses, indent=2, sort_keys=True))
    elif not statuses:
        print("no kiosk has published a status on this broker")
    else:
        print(format_table(statuses))
    return 0
