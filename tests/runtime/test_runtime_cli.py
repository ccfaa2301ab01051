"""`edge-runtime run` as a real process: SIGTERM leaves a retained offline
status and exit code 0; structured JSON logs; the no-argument sample mode."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import Collector

from edge_runtime import cmd_run
from models.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_leaves_offline_status(broker, shop_clip, pixel_bundle, validate_message):
    col = Collector(broker.port, ["kiosk/term/status"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", "run", "--source", str(shop_clip.path),
         "--bundle", str(pixel_bundle), "--broker", broker.url, "--kiosk-id", "term",
         "--loop", "--realtime", "--log-format", "json"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        up = col.wait_for(lambda m: json.loads(m[1]).get("source_state") == "streaming", 60)
        assert up, proc.stderr.read1().decode() if proc.poll() is not None else "no status"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        down = col.wait_for(lambda m: json.loads(m[1])["online"] is False, 20)
        assert down, (col.messages, err.decode()[-2000:])
        final = json.loads(down[-1][1])
        assert (final["reason"], final["source_state"]) == ("stopped", "stopped"), (
            col.messages, err.decode()[-3000:])
        validate_message("kiosk/term/status", final)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        col.close()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any("stopping" in rec["msg"] for rec in lines)
    assert all({"ts", "level", "logger", "msg"} <= rec.keys() for rec in lines)
    # a late subscriber still sees the kiosk as offline (retained)
    late = Collector(broker.port, ["kiosk/term/status"])
    try:
        got = late.wait_for(lambda m: True)
        assert got[0][2] is True and json.loads(got[0][1])["online"] is False
    finally:
        late.close()


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd_run.add_arguments(p)
    argv = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def test_no_arguments_means_the_shipped_sample(tmp_path, monkeypatch):
    fake = tmp_path / "sample"
    (fake / "bundle").mkdir(parents=True)
    (fake / "clip.mp4").write_bytes(b"")
    monkeypatch.setattr(cmd_run, "sample_dir", lambda: fake)
    (fake / "kiosk.toml").write_text('[source]\nuri = "sample/clip.mp4"\n[roi]\nx = 5\nw = 50\nh = 40\n')
    cfg = cmd_run.build_config(_args())
    assert cfg.source.uri == str(fake / "clip.mp4") and cfg.bundle.path == fake / "bundle"
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("localhost", 1883)
    assert (cfg.roi.x, cfg.roi.w, cfg.roi.h) == (5, 50, 40)   # the sample's own settings
    # flags still override the sample
    cfg = cmd_run.build_config(_args(broker="mqtt://10.1.2.3:1999"))
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("10.1.2.3", 1999)


def test_no_arguments_without_sample_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cmd_run, "sample_dir", lambda: tmp_path / "nothing")
    with pytest.raises(ConfigError, match="shipped sample is missing"):
        cmd_run.build_config(_args())
