"""The bundle store: install, rollback, prune, crash recovery, resolve_bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from edge_runtime.update.store import BundleStore, resolve_bundle
from models.bundle import read_manifest, verify_bundle
from models.errors import BundleError, UpdateError


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


def test_rollback_and_reinstall(store, site):
    v1 = store.current_name()
    p2 = store.install(_stage(store, site.root / "v2"))
    assert store.rollback().name == v1
    assert store.current_name() == v1 and store.previous_name() == p2.name
    # installing the same release again reuses its untouched folder
    ino = (p2 / "index.ann").stat().st_ino
    assert store.install(_stage(store, site.root / "v2")) == p2
    assert (p2 / "index.ann").stat().st_ino == ino


def test_rollback_without_previous_is_refused(store):
    with pytest.raises(UpdateError, match="no previous bundle"):
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
