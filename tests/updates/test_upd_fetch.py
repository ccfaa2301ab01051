"""Downloads against a real loopback HTTP server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time

import pytest

from edge_runtime.update.fetch import download_file, fetch_bytes, resolve_url
from models.errors import UpdateError

BODY = bytes(range(256)) * 40  # 10240 bytes
SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        path = self.path
        if path == "/redirect-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        if path == "/redirect-ok":
            self.send_response(302)
            self.send_header("Location", "/good")
            self.end_headers()
            return
        if path == "/missing":
            self.send_error(404)
            return
        body = {"/good": BODY, "/bigger": BODY + b"extra", "/short": BODY[:-10],
                "/flipped": bytes([BODY[0] ^ 1]) + BODY[1:], "/stall": BODY}.get(path, b"")
        self.send_response(200)
        if path != "/nolength":
            if path != "/bigger-unannounced":
                self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path == "/bigger-unannounced":
            self.wfile.write(BODY + b"x" * 100000)
            return
        if path == "/stall":
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(3)
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def base():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_good_download_and_redirect(base, tmp_path):
    download_file(f"{base}/good", tmp_path / "a", len(BODY), SHA, 5)
    assert (tmp_path / "a").read_bytes() == BODY
    download_file(f"{base}/redirect-ok", tmp_path / "b", len(BODY), SHA, 5)


@pytest.mark.parametrize("path, reason", [
    ("/bigger", "announces"),
    ("/bigger-unannounced", "larger than the 10240 bytes declared"),
    ("/short", "truncated"),
    ("/flipped", "sha256"),
    ("/missing", "HTTP 404"),
    ("/redirect-file", "(?i)redirect"),
])
def test_bad_downloads_are_refused_and_leave_nothing(base, tmp_path, path, reason):
    with pytest.raises(UpdateError, match=reason):
        download_file(f"{base}{path}", tmp_path / "x", len(BODY), SHA, 5)
    assert not (tmp_path / "x").exists()


def test_stalled_server_times_out(base, tmp_path):
    t = time.monotonic()
    with pytest.raises(UpdateError, match="download failed|too slow"):
        download_file(f"{base}/stall", tmp_path / "x", len(BODY), SHA, 0.5)
    assert time.monotonic() - t < 2.5


def test_cancel_and_caps(base, tmp_path):
    ev = threading.Event()
    ev.set()
    with pytest.raises(UpdateError, match="cancelled"):
        download_file(f"{base}/good", tmp_path / "x", len(BODY), SHA, 5, cancel=ev)
    with pytest.raises(UpdateError, match="larger than"):
        fetch_bytes(f"{base}/bigger-unannounced", 1000, 5)
    assert fetch_bytes(f"{base}/good", len(BODY), 5) == BODY


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "ftp://h/x", "data:,x", "gopher://h/"])
def test_only_http_and_https(ref):
    with pytest.raises(UpdateError, match="only http"):
        resolve_url("http://h/r/manifest.json", ref)


def test_relative_urls_and_https_only_mode():
    assert resolve_url("http://h/r/v2/manifest.json", "index.ann") == "http://h/r/v2/index.ann"
    with pytest.raises(UpdateError, match="plain http refused"):
        resolve_url("http://h/m.json", "a", allow_http=False)
    assert resolve_url("https://h/m.json", "a", allow_http=False) == "https://h/a"
