"""Fork server for the SIGKILL test: imports the update code once, then for
each JSON request on stdin forks a child that performs a real update (fetch
manifest, verify signature, download artifacts into staging, install:
fsync, rename, link switch, prune) and prints the child's pid at once, then
its exit status. The test kills the child at a random moment. Forking from
this single-threaded process is safe and costs milliseconds, so 50 kills
take seconds instead of 50 interpreter starts."""

from __future__ import annotations

import json
import os
import sys

from edge_runtime.update.commands import verified_manifest
from edge_runtime.update.config import UpdateConfig
from edge_runtime.update.fetch import Budget, fetch_bytes
from edge_runtime.update.stage import stage_release
from edge_runtime.update.store import BundleStore
from models.signing import load_public_keys


def child(req: dict) -> int:
    store = BundleStore(req["store"])
    cfg = UpdateConfig(enabled=True, store_dir=req["store"], trusted_keys=[req["pub"]],
                       mirrors=[req["mirror"]], download_timeout_s=5.0)
    staged = stage_release(store, req["url"], req["sig"], load_public_keys(cfg.trusted_keys), cfg,
                           serving=store.active_manifest(), runtime_version="0.1.0")
    store.install(staged.path)
    return 0


def warm(req: dict) -> None:
    """Do once, in the zygote, what every child would otherwise redo lazily
    (TLS context, pydantic validators): fetch and verify the manifest only."""
    data = fetch_bytes(req["url"], 1 << 20, Budget.start(5.0))
    verified_manifest(data, req["sig"], load_public_keys([req["pub"]]))


def main() -> None:
    warmed = False
    for line in sys.stdin:
        req = json.loads(line)
        if not warmed:
            warm(req)
            warmed = True
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                code = child(req)
            finally:
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {status}", flush=True)


if __name__ == "__main__":
    main()
