"""HTTP(S) downloads for updates that end by their deadline whatever the server does.

The data plane is untrusted (integrity comes from the signed manifest), so a
server may stall, trickle one byte a second with a correct Content-Length,
drip its headers, never finish a TLS handshake or send an endless body.
Each download gets a ``Budget``: an absolute deadline and the longest
silence allowed in one step. Every socket wait - name lookup, connect, TLS
handshake, each read of the headers and the body - is cut to what is left
of both (and to a quarter of a second, so a cancel is noticed), and the body
is read with ``read1`` (one bounded read at a time, never "until 64 KiB have
arrived"). A body is never read past its cap; the sha256 is computed while
writing; only http and https are followed, and every URL, redirects
included, must pass the caller's ``UrlPolicy`` before a connection is made.

Standard library only (http.client, ssl, selectors). Name lookup runs in a
helper thread so that a hung resolver cannot hold the caller past its
deadline (the thread itself ends when the resolver gives up).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.client
import io
import ipaddress
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import SplitResult, urljoin, urlsplit

from edge_runtime.update.errors import Cancelled, Rejected
from edge_runtime.update.urls import ANY_HTTP, UrlPolicy
from models.errors import UpdateError

__all__ = ["Cancel", "Budget", "FetchError", "fetch_bytes", "download_file", "CHUNK", "POLL_S"]

CHUNK = 1 << 16
POLL_S = 0.25          # longest single wait, so that cancel and the deadline are checked often
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


class Cancel(Protocol):
    """Anything with ``is_set()`` (a threading.Event, or "a newer command is waiting")."""

    def is_set(self) -> bool: ...


class FetchError(UpdateError):
    """A download failed (network, HTTP status, deadline, cancel); the text is for the log."""


class _SizeError(FetchError):
    """More or fewer bytes than declared."""


@dataclass(frozen=True)
class Budget:
    """Time allowed to one or more downloads: ``deadline`` (time.monotonic()
    seconds) ends them all; ``wait_s`` is the longest silence in one step."""

    deadline: float
    wait_s: float
    cancel: Cancel | None = None

    @classmethod
    def start(cls, seconds: float, wait_s: float | None = None,
              cancel: Cancel | None = None) -> Budget:
        return cls(time.monotonic() + seconds, seconds if wait_s is None else wait_s, cancel)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, url: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{url}: cancelled")
        if self.left() <= 0:
            raise FetchError(f"{url}: deadline passed (download too slow)")

    def step(self, url: str, silent_since: float) -> float:
        """Seconds the next wait may last; FetchError when cancelled, past the
        deadline, or silent for ``wait_s`` since ``silent_since``."""
        self.check(url)
        quiet = self.wait_s - (time.monotonic() - silent_since)
        if quiet <= 0:
            raise FetchError(f"{url}: no data for {self.wait_s:g} s (stalled)")
        return max(0.001, min(POLL_S, quiet, self.left()))


def _wait(sock: socket.socket, events: int, budget: Budget, url: str) -> None:
    """Block until ``sock`` is ready for ``events``, within the budget."""
    since = time.monotonic()
    with selectors.DefaultSelector() as sel:
        sel.register(sock, events)
        while not sel.select(budget.step(url, since)):
            pass


def _resolve(host: str, port: int, budget: Budget, url: str) -> list:
    try:
        ip = ipaddress.ip_address(host)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 0, "", (host, port))]
    except ValueError:
        pass
    out: dict[str, object] = {}

    def lookup() -> None:
        try:
            out["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            out["error"] = exc

    t = threading.Thread(target=lookup, name="update-dns", daemon=True)
    t.start()
    since = time.monotonic()
    while t.is_alive():
        t.join(budget.step(url, since))
    if "error" in out:
        raise FetchError(f"{url}: cannot resolve {host} ({out['error']})")
    return out["infos"]  # type: ignore[return-value]


def _connect(parts: SplitResult, budget: Budget, ctx: ssl.SSLContext | None, url: str
             ) -> socket.socket:
    """A connected (and, for https, handshaken) blocking socket, within the budget."""
    host, port = parts.hostname or "", parts.port or (443 if ctx else 80)
    last: Exception | None = None
    for family, kind, proto, _, addr in _resolve(host, port, budget, url):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            _wait(sock, selectors.EVENT_WRITE, budget, url)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if ctx is not None:
                sock = ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                while True:
                    try:
                        sock.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        _wait(sock, selectors.EVENT_READ, budget, url)
                    except ssl.SSLWantWriteError:
                        _wait(sock, selectors.EVENT_WRITE, budget, url)
            sock.setblocking(True)
            return sock
        except BaseException as exc:
            sock.close()
            if isinstance(exc, (UpdateError, ssl.SSLError)) or not isinstance(exc, OSError):
                raise
            last = exc
    raise FetchError(f"{url}: cannot connect ({last})")


class _BoundedSocket:
    """The connection's socket as http.client sees it: every send and every
    read waits at most what the budget allows, so headers dripped one byte at
    a time end at the deadline like a trickled body does."""

    def __init__(self, sock: socket.socket, budget: Budget, url: str) -> None:
        self._sock, self._budget, self._url = sock, budget, url
        self._files = 0          # like socket.socket: closed when the last user lets go
        self._closed = False

    def sendall(self, data: bytes) -> None:
        self._budget.check(self._url)
        self._sock.settimeout(max(0.001, min(self._budget.wait_s, self._budget.left())))
        self._sock.sendall(data)

    def recv_into(self, buf) -> int:
        since = time.monotonic()
        while True:
            self._sock.settimeout(self._budget.step(self._url, since))
            try:
                return self._sock.recv_into(buf)
            except (TimeoutError, ssl.SSLWantReadError):
                continue

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        self._files += 1
        return io.BufferedReader(_Reader(self), CHUNK)

    def file_closed(self) -> None:
        self._files -= 1
        if self._closed:
            self.close()

    def close(self) -> None:
        """http.client closes the connection while the response still reads
        from it; the socket goes when both are done, as socket.socket does."""
        self._closed = True
        if self._files <= 0:
            self._sock.close()


class _Reader(io.RawIOBase):
    def __init__(self, sock: _BoundedSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        return self._sock.recv_into(buf)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock.file_closed()


class _Connection(http.client.HTTPConnection):
    def __init__(self, parts: SplitResult, budget: Budget, ctx: ssl.SSLContext | None,
                 url: str) -> None:
        super().__init__(parts.hostname or "", parts.port or (443 if ctx else 80),
                         timeout=budget.wait_s)
        self._parts, self._budget, self._ctx, self._url = parts, budget, ctx, url

    def connect(self) -> None:
        self.sock = _BoundedSocket(_connect(self._parts, self._budget, self._ctx, self._url),
                                   self._budget, self._url)


@functools.lru_cache(maxsize=4)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """One context per CA file (loading the system CAs costs ~20 ms; do it once)."""
    return ssl.create_default_context(cafile=ca_file)


def _get(url: str, budget: Budget, policy: UrlPolicy, ca_file: str | None
         ) -> tuple[_Connection, http.client.HTTPResponse]:
    """GET ``url``, following up to MAX_REDIRECTS redirects that ``policy`` allows."""
    for _ in range(MAX_REDIRECTS + 1):
        policy.check(url)
        parts = urlsplit(url)
        ctx = _tls_context(ca_file) if parts.scheme.lower() == "https" else None
        conn = _Connection(parts, budget, ctx, url)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={"User-Agent": "kiosk-updater/2",
                                                 "Accept-Encoding": "identity",
                                                 "Connection": "close"})
            resp = conn.getresponse()
        except UpdateError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            raise FetchError(f"{url}: cannot fetch ({exc or type(exc).__name__})") from None
        if resp.status in _REDIRECTS:
            location = resp.getheader("Location")
            _close(conn, resp)
            if not location:
                raise FetchError(f"{url}: HTTP {resp.status} without a Location")
            url = urljoin(url, location)
            continue
        if resp.status != 200:
            _close(conn, resp)
            raise FetchError(f"{url}: HTTP {resp.status} {resp.reason}")
        return conn, resp
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _close(conn: _Connection, resp: http.client.HTTPResponse) -> None:
    resp.close()
    conn.close()


def _stream(url: str, max_bytes: int, budget: Budget, sink: Callable[[bytes], object], hasher,
            *, exact: int | None, policy: UrlPolicy, ca_file) -> int:
    """GET ``url`` and feed the body to ``sink`` and ``hasher``; return its
    length. Never reads more than ``max_bytes`` + 1 bytes from the socket."""
    conn, resp = _get(url, budget, policy, str(ca_file) if ca_file else None)
    try:
        length = (resp.getheader("Content-Length") or "").strip()
        if length.isdigit() and int(length) > max_bytes:
            raise _SizeError(f"{url}: server announces {int(length)} bytes, more than the "
                             f"{max_bytes} declared")
        total = 0
        while True:
            budget.check(url)
            try:
                block = resp.read1(min(CHUNK, max_bytes + 1 - total))
            except UpdateError:
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise FetchError(f"{url}: download failed ({exc or type(exc).__name__})") from None
            if not block:
                break
            total += len(block)
            if total > max_bytes:
                raise _SizeError(f"{url}: larger than the {max_bytes} bytes declared")
            hasher.update(block)
            sink(block)
    finally:
        _close(conn, resp)
    if exact is not None and total != exact:
        raise FetchError(f"{url}: {total} bytes received, {exact} declared (truncated)")
    return total


def fetch_bytes(url: str, max_bytes: int, budget: Budget, *, policy: UrlPolicy = ANY_HTTP,
                ca_file=None) -> bytes:
    """A small document (the manifest, a signature) into memory, capped."""
    parts: list[bytes] = []
    _stream(url, max_bytes, budget, parts.append, hashlib.sha256(), exact=None, policy=policy,
            ca_file=ca_file)
    return b"".join(parts)


def download_file(url: str, dest: Path, size: int, sha256: str, budget: Budget, *,
                  policy: UrlPolicy = ANY_HTTP, ca_file=None) -> None:
    """Download exactly ``size`` bytes whose sha256 is ``sha256`` into ``dest``
    (created exclusively, fsynced). On any failure ``dest`` is removed; bytes
    that differ from the manifest are Rejected("artifact_mismatch")."""
    hasher = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    ok = False
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                _stream(url, size, budget, f.write, hasher, exact=size, policy=policy,
                        ca_file=ca_file)
            except _SizeError as exc:
                raise Rejected("artifact_mismatch", str(exc)) from None
            f.flush()
            os.fsync(f.fileno())
        if hasher.hexdigest() != sha256:
            raise Rejected("artifact_mismatch",
                           f"{url}: sha256 {hasher.hexdigest()[:16]}... does not match the "
                           f"manifest's {sha256[:16]}... (altered or from another release)")
        ok = True
    finally:
        if not ok:
            try:
                os.unlink(dest)
            except OSError:
                pass
