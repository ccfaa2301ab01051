"""`deploy serve DIR [--port P] [--bind ADDR]`: serve signed releases over HTTP.

A read-only static file server (GET and HEAD only, no directory listings)
for a folder holding one subfolder per release, e.g. ``DIR/v7/manifest.json``;
push ``http://HOST:PORT/v7/manifest.json``. Integrity does not depend on the
transport: every byte is checked against the signed manifest on the kiosk.
Any static web server or object store does the same job; this one is for
small stores and tests. It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
import threading
from pathlib import Path

from models.errors import ConfigError

__all__ = ["make_server", "serve_in_thread"]

log = logging.getLogger(__name__)


class _ReadOnlyHandler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of files only: no listings, no uploads (the base class has no PUT/POST)."""

    server_version = "kiosk-release-server/1"

    def list_directory(self, path):  # noqa: D401 - http.server API
        self.send_error(404, "no directory listings")
        return None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server API
        log.info("%s %s", self.address_string(), format % args)


def make_server(root: str | Path, bind: str = "127.0.0.1", port: int = 8000
                ) -> http.server.ThreadingHTTPServer:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder to serve")
    handler = functools.partial(_ReadOnlyHandler, directory=str(root.resolve()))
    try:
        server = http.server.ThreadingHTTPServer((bind, port), handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {bind}:{port} ({exc.strerror})") from None
    server.daemon_threads = True
    return server


def serve_in_thread(root: str | Path, bind: str = "127.0.0.1", port: int = 0
                    ) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start a server on a background thread; returns (server, base URL). Stop
    it with ``server.shutdown(); server.server_close()``."""
    server = make_server(root, bind, port)
    threading.Thread(target=server.serve_forever, name="release-server", daemon=True).start()
    host, real_port = server.server_address[:2]
    return server, f"http://{host}:{real_port}/"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, metavar="DIR", help="folder of releases to serve")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")


def run(args: argparse.Namespace) -> int:
    server = make_server(args.dir, args.bind, args.port)
    host, port = server.server_address[:2]
    print(f"serving {args.dir} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
