"""Downloads against real loopback servers that misbehave on purpose: every
download ends by its deadline whatever the server does, and nothing is
fetched from outside the configured mirrors."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from upd_servers import BODY, HttpServer, Listener, self_signed

from edge_runtime.update.errors import Rejected
from edge_runtime.update.fetch import Budget, FetchError, download_file, fetch_bytes
from edge_runtime.update.urls import UrlPolicy, resolve_url
from models.errors import UpdateError

SHA = hashlib.sha256(BODY).hexdigest()
SLACK = 1.0  # scheduling slack on a loaded 2-core machine


@pytest.fixture(scope="module")
def server():
    s = HttpServer()
    yield s
    s.close()


def _ends_by_deadline(fn, deadline_s: float, match: str) -> float:
    t = time.monotonic()
    with pytest.raises(UpdateError, match=match):
        fn()
    took = time.monotonic() - t
    assert took < deadline_s + SLACK, f"took {took:.1f} s against a deadline of {deadline_s} s"
    return took


def test_good_download_and_redirect(server, tmp_path):
    download_file(f"{server.base}/good", tmp_path / "a", len(BODY), SHA, Budget.start(5))
    assert (tmp_path / "a").read_bytes() == BODY
    download_file(f"{server.base}/redirect?to=/good", tmp_path / "b", len(BODY), SHA,
                  Budget.start(5))
    assert fetch_bytes(f"{server.base}/good", len(BODY), Budget.start(5)) == BODY


@pytest.mark.parametrize("path", ["/trickle", "/endless-trickle", "/drip-headers"])
def test_a_server_that_keeps_sending_slowly_ends_at_the_deadline(server, tmp_path, path):
    """One byte every 50 ms never trips a per-read timeout: only the deadline ends it."""
    took = _ends_by_deadline(
        lambda: download_file(f"{server.base}{path}", tmp_path / "x", len(BODY), SHA,
                              Budget.start(1.2, wait_s=0.6)), 1.2, "deadline passed")
    assert took > 1.0
    assert not (tmp_path / "x").exists()
    _ends_by_deadline(lambda: fetch_bytes(f"{server.base}{path}", 1 << 20,
                                          Budget.start(0.8, wait_s=0.6)), 0.8, "deadline passed")


def test_a_server_that_stalls_after_the_headers_ends_at_the_silence_limit(server, tmp_path):
    took = _ends_by_deadline(
        lambda: download_file(f"{server.base}/stall", tmp_path / "x", len(BODY), SHA,
                              Budget.start(30, wait_s=0.8)), 0.8, "stalled")
    assert took >= 0.7


def test_an_endless_body_is_cut_at_the_declared_size(server, tmp_path):
    with pytest.raises(Rejected, match="larger than the 10240 bytes declared") as err:
        download_file(f"{server.base}/endless", tmp_path / "x", len(BODY), SHA, Budget.start(5))
    assert err.value.category == "artifact_mismatch"
    with pytest.raises(FetchError, match="larger than the 1000 bytes"):
        fetch_bytes(f"{server.base}/endless", 1000, Budget.start(5))


def test_a_tls_handshake_that_never_completes_ends_at_the_deadline(tmp_path):
    silent = Listener(tls_drip=True)
    try:
        _ends_by_deadline(lambda: fetch_bytes(f"https://127.0.0.1:{silent.port}/m.json", 1000,
                                              Budget.start(1.2, wait_s=0.6)), 1.2,
                          "deadline passed")
        assert silent.accepted == 1
    finally:
        silent.close()


def test_real_https_with_a_pinned_ca(tmp_path):
    ctx, ca = self_signed(tmp_path)
    server = HttpServer(tls=ctx)
    try:
        assert fetch_bytes(f"{server.base}/good", len(BODY), Budget.start(5), ca_file=ca) == BODY
        with pytest.raises(FetchError, match="(?i)certificate"):
            fetch_bytes(f"{server.base}/good", len(BODY), Budget.start(5))  # system CAs only
    finally:
        server.close()


def test_cancel_ends_a_trickle_within_a_poll(server, tmp_path):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    took = _ends_by_deadline(
        lambda: download_file(f"{server.base}/trickle", tmp_path / "x", len(BODY), SHA,
                              Budget.start(30, wait_s=5, cancel=cancel)), 0.5, "cancelled")
    assert took >= 0.45


@pytest.mark.parametrize("path, category, reason", [
    ("/missing", None, "HTTP 404"),
    ("/redirect?to=file:///etc/passwd", "url_refused", "only http"),
])
def test_bad_responses_are_refused_and_leave_nothing(server, tmp_path, path, category, reason):
    with pytest.raises(UpdateError, match=reason) as err:
        download_file(f"{server.base}{path}", tmp_path / "x", len(BODY), SHA, Budget.start(5))
    assert getattr(err.value, "category", None) == category
    assert not (tmp_path / "x").exists()


MIRROR = "https://updates.example.com:8443/fleet/"


@pytest.mark.parametrize("url, ok", [
    ("https://updates.example.com:8443/fleet/v2/manifest.json", True),
    ("https://UPDATES.example.com:8443/fleet/v2/manifest.json?sig=abc", True),
    ("https://updates.example.com:8443/fleet", False),            # the prefix itself, no slash
    ("https://updates.example.com:8443/fleetwide/m.json", False),
    ("https://updates.example.com/fleet/m.json", False),          # other port
    ("http://updates.example.com:8443/fleet/m.json", False),      # other scheme
    ("https://updates.example.com.evil:8443/fleet/m.json", False),
    ("https://user@updates.example.com:8443/fleet/m.json", False),
    ("https://updates.example.com:8443/fleet/../admin", False),
    ("https://updates.example.com:8443/fleet/%2E%2E/admin", False),
    ("https://updates.example.com:8443/fleet/a\\b", False),
    ("file:///fleet/m.json", False),
])
def test_mirror_prefixes(url, ok):
    policy = UrlPolicy((MIRROR,))
    if ok:
        assert policy.check(url) == url
    else:
        with pytest.raises(Rejected) as err:
            policy.check(url)
        assert err.value.category == "url_refused"


def test_nothing_outside_the_mirrors_is_ever_connected_to(server):
    """Not the URL itself, and not where an allowed mirror redirects to."""
    outside = Listener()
    try:
        policy = UrlPolicy((f"{server.base}/",))
        with pytest.raises(Rejected, match="not under any of update.mirrors"):
            fetch_bytes(f"http://127.0.0.1:{outside.port}/m.json", 1000, Budget.start(2),
                        policy=policy)
        n = len(server.requests)
        with pytest.raises(Rejected, match="not under any of update.mirrors"):
            fetch_bytes(f"{server.base}/redirect?to=http://127.0.0.1:{outside.port}/m.json",
                        1000, Budget.start(2), policy=policy)
        assert len(server.requests) == n + 1   # the mirror was asked, the target never
        time.sleep(0.3)
        assert outside.accepted == 0
    finally:
        outside.close()


def test_relative_urls_and_https_only_mode():
    assert resolve_url("http://h/r/v2/manifest.json", "index.ann") == "http://h/r/v2/index.ann"
    with pytest.raises(Rejected, match="plain http refused"):
        resolve_url("http://h/m.json", "a", UrlPolicy(None, allow_http=False))
    assert resolve_url("https://h/m.json", "a", UrlPolicy(None, allow_http=False)) == "https://h/a"
    for ref in ("file:///etc/passwd", "ftp://h/x", "data:,x", "gopher://h/"):
        with pytest.raises(Rejected, match="only http"):
            resolve_url("http://h/r/manifest.json", ref)
