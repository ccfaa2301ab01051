"""The operator tools' edges: `deploy serve` as a process, and one-line
errors (exit 2, no traceback) for the mistakes an operator makes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from support import free_port

from deploy.cli import main as deploy_main


def test_deploy_serve_serves_files_read_only(site):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "serve", str(site.root),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                body = urllib.request.urlopen(f"{base}/v1/manifest.json", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "deploy serve did not start"
                time.sleep(0.1)
        assert body == (site.root / "v1" / "manifest.json").read_bytes()
        for method, path in (("GET", "/v1/"), ("PUT", "/v1/x"), ("POST", "/v1/manifest.json")):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(urllib.request.Request(base + path, data=b"x" if method != "GET"
                                                              else None, method=method), timeout=2)
            assert err.value.code in (404, 501), (method, path)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("argv, message", [
    (["push", "--kiosk", "k1", "--manifest-url", "ftp://x/m.json", "--signature-file", "x.sig"],
     "only http"),
    (["push", "--kiosk", "k1", "--manifest-url", "http://127.0.0.1:9/m.json",
      "--signature-file", "/nonexistent.sig"], "/nonexistent.sig"),
    (["push", "--kiosk", "bad/id", "--manifest-url", "http://127.0.0.1:9/m.json",
      "--signature-file", "SIG", "--broker", "BROKER"], "kiosk ids"),
    (["status", "--broker", "http://x"], "mqtt://HOST"),
    (["status", "--broker", "mqtt://127.0.0.1:PORT", "--timeout", "2"], "cannot reach the broker"),
    (["rollback", "--kiosk", "k1", "--broker", "mqtt://127.0.0.1:PORT", "--timeout", "2"],
     "cannot reach the broker"),
])
def test_operator_mistakes_are_one_line_errors(argv, message, site, broker, capsys, tmp_path):
    sig = tmp_path / "m.sig"
    sig.write_text(site.sig("v2"))
    dead = free_port()
    argv = [a.replace("SIG", str(sig)).replace("BROKER", broker.url).replace("PORT", str(dead))
            for a in argv]
    assert deploy_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
