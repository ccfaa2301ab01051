"""The page in a real headless browser (Debian's chromium) while the shipped
sample runs: it loads, shows the live view, and shows events with their
snapshots, at desktop and at phone size. The screenshots are kept as test
artefacts (under the test's tmp dir; copied to $KIOSK_SCREENSHOT_OUT if set,
which is how docs/web.png was made)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import poll_until
from web_support import RunningKiosk, find_chromium, get_json

from edge_runtime.config import apply_overrides, load_config

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample"
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SAMPLE / "bundle" / "manifest.json").is_file(),
                       reason="sample/ is not complete"),
]

# (name, width, height, the live view's box in the screenshot: x0, y0, x1, y1)
VIEWPORTS = [("desktop", 1280, 900, (60, 140, 780, 660)), ("phone", 390, 844, (30, 135, 360, 375))]


def _chromium(tmp_path: Path) -> list[str]:
    exe = find_chromium()
    if exe is None:
        if ON_CI:
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}"]


def test_page_in_a_headless_browser(broker, tmp_path, monkeypatch):
    import cv2

    chromium = _chromium(tmp_path)
    monkeypatch.chdir(REPO)   # sample/kiosk.toml uses repo-relative paths
    cfg = apply_overrides(load_config(SAMPLE / "kiosk.toml"), {
        "kiosk.id": "web-demo", "mqtt.host": "127.0.0.1", "mqtt.port": broker.port,
        "mqtt.outbox": "memory", "backend.kind": "onnxruntime", "source.realtime": True,
        "source.loop": True, "web.enabled": True, "web.port": 0})
    out_dir = os.environ.get("KIOSK_SCREENSHOT_OUT")
    with RunningKiosk(cfg) as k:
        base = k.base

        def events() -> list:
            return get_json(f"{base}/api/events")["events"]

        # The page as a browser builds it (its script ran): the live view and an event's snapshot.
        assert poll_until(lambda: len(events()) >= 1, 60, 0.2), "no event from the sample clip"
        dom = subprocess.run([*chromium, "--virtual-time-budget=3000", "--dump-dom", base + "/"],
                             capture_output=True, text=True, timeout=120).stdout
        assert '<img id="live" alt="live view of the kiosk camera" src="/stream.mjpg">' in dom
        first = events()[-1]
        assert re.search(rf'<img src="/events/{first["event"]["event_id"]}\.jpg" alt="snapshot of ',
                         dom), dom[-3000:]

        for name, w, h, (x0, y0, x1, y1) in VIEWPORTS:
            # Just after an event the product is still in view: a screenshot worth keeping.
            n = len(events())
            assert poll_until(lambda n=n: len(events()) > n, 60, 0.1), "no further event"
            shot = tmp_path / f"web-{name}.png"
            subprocess.run([*chromium, f"--window-size={w},{h}", "--virtual-time-budget=1500",
                            f"--screenshot={shot}", base + "/"],
                           capture_output=True, timeout=120, check=True)
            img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (h, w, 3), (name, None if img is None else img.shape)
            assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 1000, name
            live = img[y0:y1, x0:x1]
            assert live.mean() > 40 and live.std() > 8, f"{name}: the live view is blank"
            if out_dir:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(out_dir) / shot.name)
