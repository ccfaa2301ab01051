"""systemd readiness and watchdog notifications (sd_notify), without libsystemd.

Why: deploy/systemd/kiosk.service runs `edge-runtime run` as ``Type=notify``
with ``WatchdogSec=``; systemd restarts the kiosk when the frame loop stops
calling ``watchdog()`` (a hung camera driver, a deadlocked thread), which a
plain ``Restart=on-failure`` cannot catch because the process is still alive.

The protocol is one datagram per message on the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside
systemd the variable is unset and every call is a cheap no-op, so the runtime
calls these unconditionally:

- ``notifier.ready()`` once the bundle is loaded, the encoder warmed up and
  the first frame read;
- ``notifier.watchdog()`` from the frame loop (it rate-limits itself to half
  the ``WATCHDOG_USEC`` interval);
- ``notifier.stopping()`` at the start of a graceful shutdown;
- ``notifier.status("...")`` for a one-line state shown by ``systemctl status``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["Notifier", "notify"]

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes:
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


def notify(message: str, socket_path: str | None = None) -> bool:
    """Send one sd_notify message; False (and nothing raised) when there is no
    systemd to tell or the send fails: a notification must never stop the kiosk."""
    raw = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            # Non-blocking: if systemd is not reading the socket, drop the
            # message rather than stall the frame loop that calls this.
            s.setblocking(False)
            s.connect(_address(raw))
            s.send(message.encode())
        return True
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", raw, exc)
        return False


class Notifier:
    """Readiness and watchdog pings for the process's own systemd unit."""

    def __init__(self, environ: dict[str, str] | None = None, clock=time.monotonic) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET", "")
        self._clock = clock
        self._last = float("-inf")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # Ping at twice the required rate, as sd_watchdog_enabled(3) recommends.
        self.interval = int(usec) / 2e6 if watched else None

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def _send(self, message: str) -> bool:
        return bool(self.socket_path) and notify(message, self.socket_path)

    def ready(self, status: str | None = None) -> bool:
        msg = "READY=1" + (f"\nSTATUS={status}" if status else "")
        return self._send(msg)

    def watchdog(self) -> bool:
        """Call often (every frame); sends WATCHDOG=1 at most every interval/2."""
        if self.interval is None:
            return False
        now = self._clock()
        if now - self._last < self.interval:
            return False
        self._last = now
        return self._send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self._send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self._send("STOPPING=1")
