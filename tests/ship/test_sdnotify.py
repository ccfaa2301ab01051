"""edge_runtime.sdnotify against a real unix datagram socket, as systemd listens."""

from __future__ import annotations

import os
import socket

import pytest

from edge_runtime.sdnotify import Notifier, notify


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def test_ready_status_stopping(listener):
    path, s = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("bundle 3 loaded")
    assert s.recv(4096) == b"READY=1\nSTATUS=bundle 3 loaded"
    assert n.status("camera reconnecting")
    assert s.recv(4096) == b"STATUS=camera reconnecting"
    assert n.stopping()
    assert s.recv(4096) == b"STOPPING=1"


def test_watchdog_rate_limited(listener):
    path, s = listener
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000",
                  "WATCHDOG_PID": str(os.getpid())}, clock=lambda: now[0])
    assert n.interval == 5.0
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    now[0] += 4.9
    assert not n.watchdog()
    now[0] += 0.2
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"


def test_watchdog_for_another_pid_is_off(listener):
    path, _ = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.interval is None and not n.watchdog()


def test_abstract_socket():
    name = f"kiosk-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(2)
    try:
        assert notify("READY=1", "@" + name)
        assert s.recv(64) == b"READY=1"
    finally:
        s.close()


def test_no_systemd_is_a_quiet_no_op(tmp_path):
    n = Notifier({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.stopping()
    # A socket path that went away never raises.
    assert not notify("READY=1", str(tmp_path / "gone.sock"))
