"""HTTP(S) downloads for updates: bounded in time and size, hashed as they stream.

The data plane is untrusted (integrity comes from the signed manifest), so a
download may be cut short, padded, slowed to a trickle or redirected. Each
request has a connect/read timeout and an overall deadline; a body is never
read past its cap (the artifact's declared size, the manifest cap); the
sha256 is computed while writing; only http and https are followed,
redirects included. Standard library only (urllib), no third-party client.
"""

from __future__ import annotations

import functools
import hashlib
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from models.errors import UpdateError

__all__ = ["resolve_url", "fetch_bytes", "download_file", "CHUNK"]

CHUNK = 1 << 16
_MIN_RATE = 64 * 1024  # bytes/s below which a download is given up (overall deadline)


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http/https (never file:, ftp:, data:)."""

    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib API
        scheme = urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise UpdateError(f"{req.full_url}: redirect to a {scheme or 'relative'}: URL refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@functools.lru_cache(maxsize=4)
def _opener(ca_file: str | None) -> urllib.request.OpenerDirector:
    """One opener per CA file (loading the system CAs costs ~20 ms; do it once)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    # build_opener() would add file:, ftp: and data: handlers; list only ours.
    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(context=ctx),
              _SchemeCheckingRedirects(), urllib.request.HTTPErrorProcessor(),
              urllib.request.HTTPDefaultErrorHandler(), urllib.request.UnknownHandler()):
        opener.add_handler(h)
    return opener


def resolve_url(base: str, ref: str, *, allow_http: bool = True) -> str:
    """``ref`` (absolute or relative to ``base``, the manifest URL) as an absolute http(s) URL."""
    url = urljoin(base, ref)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UpdateError(f"{ref!r}: only http:// and https:// URLs are fetched, not {scheme or 'this'}")
    if scheme == "http" and not allow_http:
        raise UpdateError(f"{url}: plain http refused (update.allow_http = false)")
    return url


def _stream(url: str, max_bytes: int, timeout: float, sink, hasher, *, exact: int | None,
            ca_file=None, cancel: threading.Event | None = None) -> int:
    """GET ``url``, feed chunks to ``sink`` and ``hasher``; return bytes read.
    Never reads more than ``max_bytes`` + 1 bytes from the socket."""
    resolve_url(url, url)
    deadline = time.monotonic() + timeout + max_bytes / _MIN_RATE
    req = urllib.request.Request(url, headers={"User-Agent": "kiosk-updater/1",
                                               "Accept-Encoding": "identity"})
    try:
        resp = _opener(str(ca_file) if ca_file else None).open(req, timeout=timeout)
    except UpdateError:
        raise
    except urllib.error.HTTPError as exc:
        raise UpdateError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UpdateError(f"{url}: cannot fetch ({reason})") from None
    with resp:
        length = resp.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > max_bytes:
            raise UpdateError(f"{url}: server announces {int(length)} bytes, more than the "
                              f"{max_bytes} declared")
        total = 0
        while True:
            if cancel is not None and cancel.is_set():
                raise UpdateError(f"{url}: download cancelled (runtime stopping)")
            if time.monotonic() > deadline:
                raise UpdateError(f"{url}: download too slow (gave up after {timeout:.0f} s + "
                                  f"{_MIN_RATE // 1024} KiB/s)")
            try:
                block = resp.read(min(CHUNK, max_bytes + 1 - total))
            except (OSError, ValueError) as exc:  # socket timeout, connection reset, bad chunking
                raise UpdateError(f"{url}: download failed ({exc or type(exc).__name__})") from None
            if not block:
                break
            total += len(block)
            if total > max_bytes:
                raise UpdateError(f"{url}: larger than the {max_bytes} bytes declared")
            hasher.update(block)
            sink(block)
    if exact is not None and total != exact:
        raise UpdateError(f"{url}: {total} bytes received, {exact} declared (truncated)")
    return total


def fetch_bytes(url: str, max_bytes: int, timeout: float, *, ca_file=None,
                cancel: threading.Event | None = None) -> bytes:
    """A small document (the manifest, a signature) into memory, capped."""
    parts: list[bytes] = []
    _stream(url, max_bytes, timeout, parts.append, hashlib.sha256(), exact=None,
            ca_file=ca_file, cancel=cancel)
    return b"".join(parts)


def download_file(url: str, dest: Path, size: int, sha256: str, timeout: float, *, ca_file=None,
                  cancel: threading.Event | None = None) -> None:
    """Download exactly ``size`` bytes whose sha256 is ``sha256`` into ``dest``
    (created exclusively, fsynced). On any failure ``dest`` is removed."""
    hasher = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    ok = False
    try:
        with os.fdopen(fd, "wb") as f:
            _stream(url, size, timeout, f.write, hasher, exact=size, ca_file=ca_file, cancel=cancel)
            f.flush()
            os.fsync(f.fileno())
        if hasher.hexdigest() != sha256:
            raise UpdateError(f"{url}: sha256 {hasher.hexdigest()[:16]}... does not match the "
                              f"manifest's {sha256[:16]}... (altered or from another release)")
        ok = True
    finally:
        if not ok:
            try:
                os.unlink(dest)
            except OSError:
                pass
