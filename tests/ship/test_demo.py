"""`make demo`'s script end to end, shortened: a private Mosquitto, the example
subscriber, the runtime on the first 400 frames of the sample clip played as
fast as the CPU allows; the subscriber prints the runtime's events, and
everything the script started is gone afterwards."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import find_mosquitto

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_script_shows_events(tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    if not (ROOT / "sample" / "bundle" / "manifest.json").exists():
        pytest.skip("sample/bundle is missing")
    env = dict(os.environ, DEMO_REALTIME="0", DEMO_MAX_FRAMES="400", DEMO_OUT=str(tmp_path / "out"),
               OMP_NUM_THREADS="1", KIOSK_ID="test-kiosk")
    env.pop("MQTT_URL", None)
    # As `make demo` does: the interpreter's bin/ (a venv's console scripts) first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(["bash", "deploy/demo.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    printed = [line for line in r.stdout.splitlines() if "kiosk=test-kiosk" in line]
    received = int(re.search(r"match events received: (\d+)", r.stdout).group(1))
    assert received >= 1 and len(printed) == received, r.stdout
    events = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert len({e["event_id"] for e in events}) == len(events) == received
    assert all(e["kiosk_id"] == "test-kiosk" and 0 <= e["frame_index"] < 400 for e in events)
    # The page's address was printed; it served during the run (the runtime
    # logged it) and is gone with the private broker.
    web = int(re.search(r"kiosk's page \(live view, events, status\): http://127\.0\.0\.1:(\d+)/",
                        r.stdout).group(1))
    assert f"page on http://127.0.0.1:{web}/" in (tmp_path / "out" / "runtime.log").read_text()
    port = int(re.search(r"private Mosquitto at mqtt://127\.0\.0\.1:(\d+)", r.stdout).group(1))
    for p in (port, web):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", p), timeout=1):
            pass
