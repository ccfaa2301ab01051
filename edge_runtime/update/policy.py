"""The version floor and the revoked releases: what a kiosk will never install.

``policy.json`` in the bundle store holds two facts that must outlive
rollbacks, restarts and power cuts:

- ``floor``: the highest release version ever activated on this kiosk.
  Nothing at or below it installs from the network again, so a release
  rolled back as bad cannot simply be pushed (or replayed) a second time. The
  one exception is local: a rollback to the release the store kept.
- ``revoked``: release versions the operator retired fleet-wide with a signed
  revocation (``deploy revoke``); they never install and a kiosk running one
  rolls back when it can.

The file is replaced atomically (temp file, fsync, rename, fsync of the
folder), so after a SIGKILL or a power cut it is either the old or the new
one. The floor is raised after the ``current`` link moves; a crash in
between is repaired at start (``BundleStore.recover`` raises the floor to
the active release), so the floor never trails what ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.update.errors import Rejected
from models.bundle import atomic_write_bytes
from models.errors import BundleError

__all__ = ["POLICY_FILE", "VersionPolicy", "read_policy", "write_policy"]

POLICY_FILE = "policy.json"
_SCHEMA = "kiosk.policy/1"
MAX_REVOKED = 4096


@dataclass(frozen=True)
class VersionPolicy:
    floor: int = 0
    revoked: frozenset[int] = field(default_factory=frozenset)

    def check(self, version: int) -> None:
        """Rejected when release ``version`` may not be installed from the network."""
        if version in self.revoked:
            raise Rejected("revoked", f"release {version} is revoked",
                           public=f"release {version} has been revoked")
        if version <= self.floor:
            raise Rejected("version_floor", f"release {version} is not newer than the version "
                           f"floor {self.floor} (replay or downgrade refused)",
                           public=f"release {version} is not newer than this kiosk's version "
                           f"floor {self.floor}")

    def raised_to(self, version: int) -> VersionPolicy:
        return VersionPolicy(max(self.floor, version), self.revoked)

    def with_revoked(self, versions: set[int] | frozenset[int]) -> VersionPolicy:
        return VersionPolicy(self.floor, self.revoked | frozenset(versions))

    def to_json(self) -> dict:
        return {"schema": _SCHEMA, "floor": self.floor, "revoked": sorted(self.revoked)}


def read_policy(root: Path) -> VersionPolicy:
    """The store's policy; the default (floor 0, nothing revoked) when there is none yet."""
    path = Path(root) / POLICY_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return VersionPolicy()
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); it holds this kiosk's version floor: "
                          "restore it or remove it knowingly") from None
    try:
        floor, revoked = doc["floor"], doc["revoked"]
        if doc.get("schema") != _SCHEMA or not isinstance(floor, int) or floor < 0 or \
                not isinstance(revoked, list) or not all(isinstance(v, int) for v in revoked):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{path}: not a {_SCHEMA} document") from None
    return VersionPolicy(floor, frozenset(revoked))


def write_policy(root: Path, policy: VersionPolicy) -> None:
    if len(policy.revoked) > MAX_REVOKED:
        raise BundleError(f"more than {MAX_REVOKED} revoked releases")
    atomic_write_bytes(Path(root) / POLICY_FILE,
                       (json.dumps(policy.to_json(), separators=(",", ":")) + "\n").encode())
