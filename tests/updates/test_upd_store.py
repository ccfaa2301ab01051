"""The bundle store: install, rollback, prune, crash recovery, resolve_bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from edge_runtime.update.errors import Rejected
from edge_runtime.update.store import BundleStore, resolve_bundle
from models.bundle import read_manifest, verify_bundle
from models.errors import BundleError


def _stage(store: BundleStore, src):
    staged = store.new_staging()
    shutil.copytree(src, staged, dirs_exist_ok=True)
    return staged


def test_install_switches_link_keeps_previous_and_prunes(store, site):
    v1 = store.current_name()
    assert v1.startswith("1-") and os.readlink(store.root / "current") == f"releases/{v1}"
    p2 = store.install(_stage(store, site.root / "v2"))
    assert store.current_name() == p2.name and store.previous_name() == v1
    assert read_manifest(resolve_bundle(store.root)).bundle_version == 2
    p3 = store.install(_stage(store, site.root / "v3"))
    # keep=2: v1 pruned, never the current (v3) or previous (v2)
    assert store.release_names() == [p3.name, p2.name]
    assert not any(store.staging.iterdir())
    assert not list(store.root.glob(".*.tmp-*"))


def test_rollback_retires_what_it_leaves_and_the_floor_holds(store, site):
    """Before: "newer" meant newer than the active release, so after a rollback
    from a bad v2 the same v2 installed again, and rolling "back" twice
    returned to it."""
    v1 = store.current_name()
    p2 = store.install(_stage(store, site.root / "v2"))
    assert store.policy().floor == 2
    assert store.rollback().name == v1
    assert store.current_name() == v1 and store.previous_name() is None
    with pytest.raises(Rejected) as err:
        store.rollback()
    assert err.value.category == "no_previous"
    with pytest.raises(Rejected) as err:
        store.install(_stage(store, site.root / "v2"))
    assert err.value.category == "version_floor"
    assert store.current_name() == v1 and store.policy().floor == 2
    store.remove_release(p2.name)
    p3 = store.install(_stage(store, site.root / "v3"))
    assert store.current_name() == p3.name and store.policy().floor == 3
    assert json.loads((store.root / "policy.json").read_text())["floor"] == 3


def test_the_floor_is_repaired_at_start_after_a_crash_before_its_write(store, site):
    p2 = store.install(_stage(store, site.root / "v2"))
    (store.root / "policy.json").unlink()          # as if killed between link switch and write
    assert store.policy().floor == 0
    assert store.recover() == p2
    assert store.policy().floor == 2


def test_revoked_releases_never_activate_and_are_not_fallen_back_to(store, site):
    v1 = store.current_name()
    staged = _stage(store, site.root / "v2")
    store.revoke({2})
    with pytest.raises(Rejected) as err:
        store.install(staged)
    assert err.value.category == "revoked" and store.current_name() == v1
    p3 = store.install(_stage(store, site.root / "v3"))
    store.revoke({1})
    with pytest.raises(Rejected, match="revoked"):
        store.rollback()           # the kept previous (v1) is revoked too
    with open(p3 / "items.json", "r+b") as f:   # damage the current release
        f.truncate(5)
    with pytest.raises(BundleError, match="no complete bundle"):
        store.recover()            # v1 is complete but revoked, v2 was never installed
    assert store.policy().revoked == {1, 2}


def test_a_damaged_policy_file_is_a_clear_error(store):
    (store.root / "policy.json").write_text("{")
    with pytest.raises(BundleError, match="policy.json: unreadable"):
        store.policy()


def test_rollback_without_previous_is_refused(store):
    with pytest.raises(Rejected, match="no previous bundle"):
        store.rollback()


def test_install_refuses_incomplete_bundle(store, site):
    staged = _stage(store, site.root / "v2")
    (staged / "embeddings.npy").unlink()
    with pytest.raises(BundleError, match="embeddings.npy"):
        store.install(staged)
    assert store.current_name().startswith("1-")


def test_recover_cleans_staging_and_falls_back_to_previous(store, site):
    v1 = store.current_name()
    p2 = store.install(_stage(store, site.root / "v2"))
    leftover = store.new_staging()
    (leftover / "partial.bin").write_bytes(b"x" * 10)
    os.symlink("releases/nowhere", store.root / ".current.tmp-dead")
    # damage the current release: recovery must go back to previous
    with open(p2 / "items.json", "r+b") as f:
        f.truncate(5)
    assert store.recover().name == v1
    assert store.current_name() == v1
    assert not any(store.staging.iterdir())
    assert not (store.root / ".current.tmp-dead").is_symlink()
    verify_bundle(store.current_path())


def test_recover_with_no_complete_release_is_an_error(tmp_path, site):
    s = BundleStore(tmp_path / "s")
    s.init_from(site.root / "v1")
    (s.current_path() / "index.ann").unlink()
    with pytest.raises(BundleError, match="no complete bundle"):
        s.recover()


def test_resolve_bundle_plain_folder_and_init_from(tmp_path, site):
    assert resolve_bundle(site.root / "v1") == site.root / "v1"
    s = BundleStore(tmp_path / "s")
    first = s.init_from(site.root / "v1")
    assert s.init_from(site.root / "v1") == first  # idempotent
    with pytest.raises(BundleError, match="already has release"):
        s.init_from(site.root / "v2")


def test_store_module_cli(tmp_path, site):
    root = tmp_path / "cli-store"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-m", "edge_runtime.update.store", "init", str(root),
                          str(site.root / "v1")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "edge_runtime.update.store", "show", str(root)],
                         capture_output=True, text=True, env=env)
    assert "bundle_version 1" in out.stdout
    out = subprocess.run([sys.executable, "-m", "edge_runtime.update.store", "init", str(root),
                          str(tmp_path / "missing")], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "missing" in out.stderr and "Traceback" not in out.stderr


def test_a_store_without_an_active_release_still_enforces_compatibility_and_floor(tmp_path, site):
    """Before: with no active manifest (first install) the version and
    compatibility checks were skipped."""
    from edge_runtime.update.config import UpdateConfig
    from edge_runtime.update.policy import VersionPolicy, write_policy
    from edge_runtime.update.stage import stage_release
    from models.signing import load_public_keys

    store = BundleStore(tmp_path / "empty")
    store.releases.mkdir(parents=True)
    assert store.active_manifest() is None
    serving = read_manifest(site.root / "v1")        # what the pipeline runs
    cfg = UpdateConfig(enabled=True, store_dir=store.root, trusted_keys=[site.keys.pub],
                       mirrors=[site.base])
    keys = load_public_keys(cfg.trusted_keys)

    def stage(name):
        return stage_release(store, site.url(name), site.sig(name), keys, cfg, serving=serving,
                             runtime_version="0.1.0")

    with pytest.raises(Rejected) as err:
        stage("v2-dim32")
    assert err.value.category == "incompatible"
    with pytest.raises(Rejected) as err:
        stage("v1")                                  # not newer than what serves
    assert err.value.category == "version_floor"
    write_policy(store.root, VersionPolicy(floor=2))
    with pytest.raises(Rejected) as err:
        stage("v2")
    assert err.value.category == "version_floor"
    staged = stage("v3")
    assert staged.manifest.bundle_version == 3
    store.discard(staged.path)
