"""End to end against a real kiosk process (`edge-runtime run --config`), a
real Mosquitto and a real HTTP mirror: a trickling mirror cannot hold the
kiosk past its deadline nor delay a rollback, the version floor outlives a
rollback and a restart, a signed revocation retires a release fleet-wide, and
the retained status names what runs after each step and after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from upd_harness import Operator, frame_folder
from upd_servers import HttpServer

from deploy.cli import main as deploy_main
from deploy.sign import sign_bundle
from edge_runtime.update.commands import make_rollback_command, make_update_command
from models.bundle import read_manifest

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 4.0


class KioskProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "run",
                                          "--config", str(self.config)],
                                         cwd=REPO, env=env, stdout=logf, stderr=logf)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _status(op: Operator, predicate, timeout: float = 30.0) -> dict:
    found = op.collector.wait_for(lambda m: m[0] == "kiosk/e2e/status"
                                  and predicate(json.loads(m[1])), timeout)
    assert found, [json.loads(p) for t, p, _ in op.collector.messages if t.endswith("/status")][-3:]
    return json.loads(found[-1][1])


def _runs(status: dict, m, floor: int, revoked: list[int] = ()) -> None:
    assert (status["bundle_version"], status["encoder_sha256"], status["index_sha256"]) == (
        m.bundle_version, m.encoder.sha256, m.index.sha256), status
    assert status["floor"] == floor and status["revoked"] == list(revoked), status
    assert status["backend"] == "onnxruntime" and status["engine"], status


def _send(op: Operator, kind: str, payload: dict) -> float:
    op.send("e2e", kind, payload)
    return time.monotonic()


def test_real_kiosk_process_trickle_floor_revocation_and_status(broker, site, tmp_path, capsys):
    mirror = HttpServer(site.root)
    v4 = site.copy("v3", "e2e-v4")
    sign_bundle(v4, site.keys.key, version=4)
    m = {v: read_manifest(site.root / n) for v, n in ((1, "v1"), (2, "v2"), (3, "v3"), (4, "e2e-v4"))}

    def url(name: str) -> str:
        return f"{mirror.base}/site/{name}/manifest.json"

    config = tmp_path / "kiosk.toml"
    config.write_text(f"""
[kiosk]
id = "e2e"
[source]
uri = "{frame_folder(site.catalogue, tmp_path / 'frames')}"
realtime = true
loop = true
folder_fps = 30.0
[bundle]
path = "{site.root / 'v1'}"
[decision]
threshold = 0.5
margin = 0.0
window = 3
min_frames = 2
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[update]
enabled = true
store_dir = "{tmp_path / 'store'}"
trusted_keys = ["{site.keys.pub}"]
mirrors = ["{mirror.base}/site/"]
download_timeout_s = 2.0
deadline_s = {DEADLINE_S}
verify_timeout_s = 60.0
""")
    op = Operator(broker)
    kiosk = KioskProcess(config, tmp_path / "kiosk.log")
    try:
        kiosk.start()
        _runs(_status(op, lambda s: s.get("online") and "floor" in s, 60), m[1], floor=1)

        assert deploy_main(["push", "--kiosk", "e2e", "--manifest-url", url("v2"),
                            "--broker", broker.url, "--wait", "60"]) == 0, capsys.readouterr()
        _runs(_status(op, lambda s: s.get("bundle_version") == 2), m[2], floor=2)

        # A mirror trickling one byte every 50 ms: rejected at the deadline, not after it.
        mirror.trickle("encoder.onnx")
        cmd = make_update_command(url("v3"), site.sig("v3"))
        sent = _send(op, "update", cmd)
        final = op.wait_final(cmd["command_id"], DEADLINE_S + 10)
        took = time.monotonic() - sent
        assert (final["state"], final["error"]) == ("rejected", "artifact_unavailable"), final
        assert took < DEADLINE_S + 1.0, f"{took:.1f} s against a deadline of {DEADLINE_S} s"

        # ... nor hold up a rollback sent while it trickles.
        cmd = make_update_command(url("v3"), site.sig("v3"))
        _send(op, "update", cmd)
        assert op.collector.wait_for(lambda t: b'"downloading"' in t[1]
                                     and cmd["command_id"].encode() in t[1], 10)
        rb = make_rollback_command()
        sent = _send(op, "rollback", rb)
        assert op.collector.wait_for(lambda t: b'"received"' in t[1]
                                     and rb["command_id"].encode() in t[1], 10)
        started = time.monotonic() - sent      # the worker was free again
        final = op.wait_final(rb["command_id"], 20)
        assert final["state"] == "rolled_back" and final["bundle_version"] == 1, final
        assert started < 1.5, f"the rollback waited {started:.1f} s for the trickling update"
        assert op.wait_final(cmd["command_id"], 5)["error"] == "superseded"
        mirror.trickle()
        _runs(_status(op, lambda s: s.get("bundle_version") == 1), m[1], floor=2)

        # The floor: the release rolled back from does not come back.
        cmd = make_update_command(url("v2"), site.sig("v2"))
        _send(op, "update", cmd)
        assert op.wait_final(cmd["command_id"], 20)["error"] == "version_floor"

        assert deploy_main(["push", "--kiosk", "e2e", "--manifest-url", url("v3"),
                            "--broker", broker.url, "--wait", "60"]) == 0
        _runs(_status(op, lambda s: s.get("bundle_version") == 3), m[3], floor=3)

        # Revocation: v3 (running) and v4 (not yet installed) retired fleet-wide.
        capsys.readouterr()
        assert deploy_main(["revoke", "--kiosk", "e2e", "--version", "3", "--version", "4",
                            "--release-key", str(site.keys.key), "--broker", broker.url,
                            "--wait", "60"]) == 0
        assert "e2e: revoked" in capsys.readouterr().out
        _runs(_status(op, lambda s: s.get("revoked") == [3, 4] and s.get("bundle_version") == 1),
              m[1], floor=3, revoked=[3, 4])
        cmd = make_update_command(url("e2e-v4"), site.sig("e2e-v4"))
        _send(op, "update", cmd)
        final = op.wait_final(cmd["command_id"], 20)
        assert final["error"] == "revoked" and final["reason"] == "release 4 has been revoked"

        # A restart keeps all of it, and the status still tells the truth.
        assert kiosk.stop() == 0
        _status(op, lambda s: s.get("online") is False)
        n = len(op.collector.messages)
        kiosk.start()
        assert op.collector.wait_for(lambda t: op.collector.messages.index(t) >= n
                                     and t[0] == "kiosk/e2e/status"
                                     and json.loads(t[1]).get("online") is True
                                     and "floor" in json.loads(t[1]), 60)
        _runs(_status(op, lambda s: s.get("online") is True), m[1], floor=3, revoked=[3, 4])
        cmd = make_update_command(url("v3"), site.sig("v3"))
        _send(op, "update", cmd)
        assert op.wait_final(cmd["command_id"], 20)["error"] == "revoked"
    except BaseException:
        print((tmp_path / "kiosk.log").read_text()[-6000:])
        raise
    finally:
        kiosk.kill()
        op.close()
        mirror.close()

