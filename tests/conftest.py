from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import Broker, find_mosquitto, make_product_photos  # noqa: E402
from tiny_bundle import make_tiny_bundle  # noqa: E402,F401  (re-exported for tests)

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory, monkeypatch):
    """Each test its own kiosk state directory (where the outbox lives by
    default), never the user's home, and no leftovers from another test."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def broker(tmp_path_factory):
    """A real Mosquitto broker on a free loopback port (function scope)."""
    if find_mosquitto() is None:
        if ON_CI:
            pytest.fail("mosquitto is not installed (CI must install it)")
        pytest.skip("mosquitto is not installed")
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tiny_catalogue(tmp_path_factory) -> Path:
    """A small synthetic catalogue tree: 4 items x 3 photos (real JPEGs)."""
    return make_product_photos(tmp_path_factory.mktemp("catalogue"), n_items=4, per_item=3)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_catalogue) -> Path:
    """A real bundle (seeded untrained encoder exported to ONNX, indexed on
    ``tiny_catalogue``). Shared by the session: copy it (shutil.copytree)
    before changing anything in it."""
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"), tiny_catalogue, seed=0)
