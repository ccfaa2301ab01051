"""Fixtures for the update tests: signing keys, signed releases served by a
real HTTP server on loopback, and a bundle store seeded with release 1."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import make_product_photos  # noqa: E402
from upd_synth import build_bundle  # noqa: E402

from deploy.serve import serve_in_thread  # noqa: E402
from deploy.sign import sign_bundle  # noqa: E402
from edge_runtime.update.store import BundleStore  # noqa: E402
from models.signing import write_keypair  # noqa: E402


@pytest.fixture(scope="session")
def upd_keys(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("keys")
    key, pub, kid = write_keypair(d, "release")
    other_key, other_pub, other_kid = write_keypair(d, "intruder")
    return SimpleNamespace(key=key, pub=pub, kid=kid, other_key=other_key, other_pub=other_pub,
                           other_kid=other_kid)


@pytest.fixture(scope="session")
def site(tmp_path_factory, upd_keys) -> SimpleNamespace:
    """Signed releases under one served folder: v1, v2, v3 (same encoder family,
    embedding size 16) and v2-dim32 (another embedding size). Read-only: tests
    that alter a release copy it with ``site.copy(name, new_name)`` first."""
    root = tmp_path_factory.mktemp("site")
    cat = make_product_photos(tmp_path_factory.mktemp("upd-cat"), n_items=4, per_item=3)
    build_bundle(root / "v1", cat, version=1, seed=0)
    build_bundle(root / "v2", cat, version=2, seed=1)
    build_bundle(root / "v3", cat, version=3, seed=2)
    build_bundle(root / "v2-dim32", cat, version=2, dim=32, seed=1)
    for name in ("v1", "v2", "v3", "v2-dim32"):
        sign_bundle(root / name, upd_keys.key)
    server, base = serve_in_thread(root)
    ns = SimpleNamespace(root=root, base=base, catalogue=cat, server=server, keys=upd_keys)

    def url(name: str) -> str:
        return f"{base}{name}/manifest.json"

    def sig(name: str) -> str:
        return (root / name / "manifest.sig").read_text().strip()

    def copy(name: str, new_name: str) -> Path:
        dst = root / new_name
        shutil.copytree(root / name, dst)
        return dst

    ns.url, ns.sig, ns.copy = url, sig, copy
    yield ns
    server.shutdown()
    server.server_close()


@pytest.fixture
def store(tmp_path, site) -> BundleStore:
    s = BundleStore(tmp_path / "store", keep=2)
    s.init_from(site.root / "v1")
    return s


@pytest.fixture(scope="session")
def site_manifest(site) -> bytes:
    """The bytes of a real release manifest (v2), for mutation fuzzing."""
    return (site.root / "v2" / "manifest.json").read_bytes()
