"""The kiosk's bundle store: versioned releases and an atomically switched link.

Layout (one filesystem, so every switch is a rename)::

    root/releases/<version>-<sha8>/   complete, verified bundles; never modified after install
    root/current  -> releases/...     the active release (a symlink)
    root/previous -> releases/...     the one before it, for rollback
    root/staging/<random>/            downloads in progress; deleted at start

Why this shape (RAUC/Mender-style A/B, by folder): a release is written in
full under staging/, fsynced, then renamed into releases/ (atomic), and only
then does ``current`` change, by creating a new symlink under a temporary name
and ``os.replace``-ing it over the old one, followed by an fsync of the
folder. ``ln -sfn`` is not atomic (unlink + symlink). A crash at any point
therefore leaves ``current`` on a complete release: the old one before the
rename of the link, the new one after. Files of a release are never
rewritten, so an index memory-mapped by the running matcher is never
truncated under it (SIGBUS). Pruning renames a release into staging/ before
deleting it, so a half-deleted release is never visible under releases/.

``policy.json`` (edge_runtime.update.policy) keeps the version floor, the
highest version ever activated, and the revoked versions: ``activate``
refuses a release at or below the floor or revoked; ``rollback`` is the one
way below it, to the kept ``previous`` release, and it removes the release
it leaves, so a rollback cannot be undone by rolling "back" again.

``python -m edge_runtime.update.store init STORE BUNDLE_DIR`` seeds a store from a
bundle folder; ``python -m edge_runtime.update.store show STORE`` prints its state.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from edge_runtime.update.errors import Rejected
from edge_runtime.update.policy import VersionPolicy, read_policy, write_policy
from models.bundle import MANIFEST, Manifest, read_manifest, verify_bundle
from models.errors import BundleError, KioskError

__all__ = ["BundleStore", "resolve_bundle", "is_store"]

log = logging.getLogger(__name__)

CURRENT, PREVIOUS, RELEASES, STAGING, LOCK = "current", "previous", "releases", "staging", ".lock"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder below ``root`` (bottom-up), then ``root``."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def is_store(path: str | Path) -> bool:
    p = Path(path)
    return (p / CURRENT).is_symlink() or (p / RELEASES).is_dir()


def _version_of(release_name: str) -> int:
    head = release_name.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


class BundleStore:
    """Releases, ``current`` and ``previous`` under ``root``. Only one process
    changes a store at a time (an flock on root/.lock)."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root).absolute()
        self.keep = max(2, int(keep))  # current and previous are never pruned
        self.releases = self.root / RELEASES
        self.staging = self.root / STAGING

    # ---------------------------------------------------------------- links
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _target(self, link: str) -> str | None:
        """Release name a link points at (None when absent or not ours)."""
        try:
            t = os.readlink(self.root / link)
        except OSError:
            return None
        parts = Path(t).parts
        if len(parts) == 2 and parts[0] == RELEASES and parts[1] not in (".", ".."):
            return parts[1]
        log.warning("store %s: %s -> %s is not a release link; ignoring it", self.root, link, t)
        return None

    def _set_link(self, link: str, release: str) -> None:
        """Point ``link`` at ``release``: new symlink under a temp name, os.replace, fsync."""
        tmp = self.root / f".{link}.tmp-{uuid.uuid4().hex[:8]}"
        os.symlink(f"{RELEASES}/{release}", tmp)
        os.replace(tmp, self.root / link)
        _fsync_dir(self.root)

    def _drop_link(self, link: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / link)
            _fsync_dir(self.root)

    # ---------------------------------------------------------------- queries
    def current_name(self) -> str | None:
        return self._target(CURRENT)

    def previous_name(self) -> str | None:
        return self._target(PREVIOUS)

    def current_path(self) -> Path:
        """The active release folder (a real path, stable across later switches)."""
        name = self.current_name()
        if name is None or not (self.releases / name).is_dir():
            raise BundleError(f"{self.root}: bundle store has no current release "
                              "(seed it with `python -m edge_runtime.update.store init`)")
        return self.releases / name

    def active_manifest(self) -> Manifest | None:
        try:
            return read_manifest(self.current_path())
        except BundleError:
            return None

    def policy(self) -> VersionPolicy:
        """The version floor and revoked versions (durable, see policy.py)."""
        return read_policy(self.root)

    def _raise_floor_locked(self, name: str) -> None:
        policy = read_policy(self.root)
        if _version_of(name) > policy.floor:
            write_policy(self.root, policy.raised_to(_version_of(name)))

    def revoke(self, versions: set[int]) -> VersionPolicy:
        """Add ``versions`` to the revoked set (durably); returns the new policy."""
        with self._locked():
            policy = read_policy(self.root).with_revoked(versions)
            write_policy(self.root, policy)
            return policy

    def release_names(self) -> list[str]:
        if not self.releases.is_dir():
            return []
        names = [p.name for p in self.releases.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(names, key=lambda n: (_version_of(n), n), reverse=True)

    # ---------------------------------------------------------------- changes
    def new_staging(self) -> Path:
        """A fresh, empty folder on the store's filesystem for one download."""
        self.staging.mkdir(parents=True, exist_ok=True)
        p = self.staging / uuid.uuid4().hex
        p.mkdir()
        return p

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def _valid(self, name: str | None) -> bool:
        if name is None or not (self.releases / name).is_dir():
            return False
        try:
            verify_bundle(self.releases / name)
            return True
        except BundleError as exc:
            log.warning("store %s: release %s is not complete: %s", self.root, name, exc)
            return False

    def recover(self) -> Path:
        """At start: delete staging leftovers and temp links; make ``current``
        point at a complete verified release (else ``previous``, else the newest
        complete one). Returns the active release folder."""
        with self._locked():
            self.releases.mkdir(parents=True, exist_ok=True)
            if self.staging.exists():
                for p in self.staging.iterdir():
                    log.info("store %s: removing leftover %s", self.root, p.name)
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
            for p in self.root.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)
            cur, prev = self.current_name(), self.previous_name()
            if not self._valid(cur):
                revoked = read_policy(self.root).revoked
                candidates = [n for n in [prev] + self.release_names()
                              if n is not None and n != cur and _version_of(n) not in revoked]
                good = next((n for n in candidates if self._valid(n)), None)
                if good is None:
                    raise BundleError(f"{self.root}: no complete bundle in the store")
                log.warning("store %s: current release %s is not usable; switching to %s",
                            self.root, cur, good)
                self._set_link(CURRENT, good)
                if good == prev:
                    self._drop_link(PREVIOUS)
                cur = good
            if prev is not None and (prev == cur or not (self.releases / prev).is_dir()):
                self._drop_link(PREVIOUS)
            self._raise_floor_locked(cur)  # a crash between link switch and floor write
            return self.releases / cur

    def commit(self, staged: Path, *, verify: bool = True) -> str:
        """Move the complete bundle in ``staged`` (a folder under staging/) into
        releases/ (fsync, rename, fsync) without making it current; returns the
        release name. ``staged`` is consumed. A release of the same name that is
        already there and complete is reused. ``verify=False`` is for the
        updater only: it has checked every byte against the signed manifest
        while downloading and verifies the release in full (Matcher.open)
        before it activates it."""
        staged = Path(staged)
        m = verify_bundle(staged) if verify else read_manifest(staged)
        digest = hashlib.sha256((staged / MANIFEST).read_bytes()).hexdigest()[:8]
        name = f"{m.bundle_version}-{digest}"
        with self._locked():
            self.releases.mkdir(parents=True, exist_ok=True)
            dest = self.releases / name
            if dest.exists() and self._valid(name):
                self.discard(staged)  # same release installed before (e.g. after a rollback)
                return name
            if dest.exists():  # damaged copy: move it out of releases/ first
                os.rename(dest, self.new_staging() / "damaged")
            _fsync_tree(staged)
            os.rename(staged, dest)
            _fsync_dir(self.releases)
        return name

    def activate(self, name: str) -> Path:
        """Make release ``name`` current (the old current becomes previous),
        raise the version floor to it, then prune. Rejected when ``name`` is at
        or below the floor or revoked (unless it is current already)."""
        with self._locked():
            if not (self.releases / name).is_dir():
                raise BundleError(f"{self.releases / name}: no such release")
            old = self.current_name()
            if old != name:
                read_policy(self.root).check(_version_of(name))
                if old is not None:
                    self._set_link(PREVIOUS, old)
                self._set_link(CURRENT, name)
            self._raise_floor_locked(name)
            self._prune_locked()
        return self.releases / name

    def install(self, staged: Path) -> Path:
        """commit + activate: ``staged`` becomes the current release."""
        return self.activate(self.commit(staged))

    def remove_release(self, name: str) -> None:
        """Delete a committed release that is neither current nor previous
        (one that failed its self-test)."""
        with self._locked():
            if name in (self.current_name(), self.previous_name()) or \
                    not (self.releases / name).is_dir():
                return
            trash = self.new_staging()
            os.rename(self.releases / name, trash / name)
            _fsync_dir(self.releases)
            shutil.rmtree(trash, ignore_errors=True)

    def rollback(self, *, verify: bool = True) -> Path:
        """Switch ``current`` back to ``previous`` and drop the ``previous``
        link: the release left behind stays retired (the floor keeps it from
        being installed again; ``remove_release`` deletes it once nothing uses
        it). Rejected("no_previous") when there is no complete, unrevoked
        previous release. ``verify=False``: the caller has verified it."""
        with self._locked():
            prev, cur = self.previous_name(), self.current_name()
            if prev is None or prev == cur:
                raise Rejected("no_previous", "no previous bundle to roll back to")
            if _version_of(prev) in read_policy(self.root).revoked:
                raise Rejected("no_previous", f"previous bundle {prev} is revoked; not rolling back")
            if verify and not self._valid(prev):
                raise Rejected("no_previous", f"previous bundle {prev} is not complete; "
                               "not rolling back")
            self._set_link(CURRENT, prev)
            self._drop_link(PREVIOUS)
            return self.releases / prev

    def prune(self) -> list[str]:
        with self._locked():
            return self._prune_locked()

    def _prune_locked(self) -> list[str]:
        """Delete releases beyond ``keep`` (newest first), never current or previous."""
        protected = {n for n in (self.current_name(), self.previous_name()) if n}
        kept = set(protected)
        removed = []
        for n in self.release_names():
            if n in kept:
                continue
            if len(kept) < self.keep:
                kept.add(n)
                continue
            trash = self.new_staging()
            os.rename(self.releases / n, trash / n)  # out of releases/ atomically, then delete
            _fsync_dir(self.releases)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(n)
        return removed

    def init_from(self, bundle_dir: str | Path) -> Path:
        """Seed the store from a bundle folder (copied; its engines/ cache too).
        A store that already has a current release is left alone when it holds
        the same manifest, else this is an error (use an update instead)."""
        src = Path(bundle_dir)
        verify_bundle(src)
        if self.current_name() is not None:
            cur = self.current_path()
            if (cur / MANIFEST).read_bytes() == (src / MANIFEST).read_bytes():
                return cur
            raise BundleError(f"{self.root}: store already has release {self.current_name()}; "
                              "send an update instead of seeding again")
        staged = self.new_staging() / "bundle"
        shutil.copytree(src, staged, symlinks=False,
                        ignore=shutil.ignore_patterns(".*", "__pycache__"))
        try:
            return self.install(staged)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)


def resolve_bundle(path: str | Path, keep: int = 2) -> Path:
    """A bundle store (has ``current`` or ``releases/``) -> its active release
    after crash recovery; any other path is taken as a bundle folder itself."""
    p = Path(path)
    if is_store(p):
        return BundleStore(p, keep=keep).recover()
    return p


def _main(argv: list[str]) -> int:
    usage = "usage: python -m edge_runtime.update.store (init STORE BUNDLE_DIR | show STORE | recover STORE)"
    if len(argv) < 2 or argv[0] not in ("init", "show", "recover") or \
            (argv[0] == "init") != (len(argv) == 3) or len(argv) > 3:
        print(usage, file=sys.stderr)
        return 2
    store = BundleStore(argv[1])
    try:
        if argv[0] == "init":
            print(store.init_from(argv[2]))
            return 0
        if argv[0] == "recover":
            store.recover()
        m = store.active_manifest()
        policy = store.policy()
        print(f"store:    {store.root}\ncurrent:  {store.current_name()}"
              f" (bundle_version {m.bundle_version if m else '?'})\n"
              f"previous: {store.previous_name()}\nreleases: {', '.join(store.release_names())}\n"
              f"floor:    {policy.floor}\nrevoked:  "
              f"{', '.join(map(str, sorted(policy.revoked))) or '-'}")
        return 0
    except KioskError as exc:
        print(f"edge_runtime.update.store {argv[0]}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(_main(sys.argv[1:]))
