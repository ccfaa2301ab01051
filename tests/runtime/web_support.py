"""Helpers for the page's tests: real HTTP with the standard library, a
kiosk running in a thread until stopped, and the headless browser."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from typing import Any

from support import poll_until

__all__ = ["http", "get_json", "RunningKiosk", "find_chromium"]


def http(url: str, *, method: str = "GET", token: str | None = None,
         timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one real HTTP request; an error status is returned, not raised."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str, token: str | None = None) -> Any:
    code, _, body = http(url, token=token)
    assert code == 200, (url, code, body[:200])
    return json.loads(body)


class RunningKiosk:
    """``Kiosk(cfg).run`` in a thread; ``base`` is the page's address once it serves."""

    def __init__(self, cfg: Any) -> None:
        from edge_runtime.cmd_run import Kiosk

        self.kiosk = Kiosk(cfg)
        self.stop_event = threading.Event()
        self.result: list[str] = []
        self.thread = threading.Thread(target=lambda: self.result.append(
            self.kiosk.run(self.stop_event)), daemon=True)

    def __enter__(self) -> RunningKiosk:
        self.thread.start()
        assert poll_until(lambda: self.kiosk.web is not None or not self.thread.is_alive(), 60), \
            "the page did not start"
        assert self.kiosk.web is not None, "the kiosk stopped before serving the page"
        self.base = self.kiosk.web.url.rstrip("/")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the kiosk did not stop"


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")
