"""Runtime test fixtures (helpers in runtime_support.py)."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest
from runtime_support import Clip, make_clip, make_pixel_bundle, message_validator


@pytest.fixture(scope="session")
def pixel_bundle(tmp_path_factory, tiny_catalogue) -> Path:
    """A real bundle over ``tiny_catalogue`` with the pixel encoder (threshold 0.9)."""
    return make_pixel_bundle(tmp_path_factory.mktemp("pixel") / "bundle", tiny_catalogue)


@pytest.fixture(scope="session")
def shop_clip(tmp_path_factory, tiny_catalogue) -> Clip:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", tiny_catalogue)


@pytest.fixture(scope="session")
def validate_message():
    return message_validator()


@pytest.fixture
def persistent_broker(tmp_path):
    """A real broker that keeps sessions across a restart, so the test's
    SessionSubscriber misses nothing while the broker is down. (``user`` keeps
    a root-started mosquitto from dropping to a user who cannot write here.)"""
    from support import Broker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    store = tmp_path / "db"
    store.mkdir()
    b = Broker(tmp_path / "pb", extra_conf=f"persistence true\npersistence_location {store}/\n"
               f"user {getpass.getuser()}\n")
    b.start()
    yield b
    b.stop()
