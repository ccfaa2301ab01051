"""No pickle and no torch on the kiosk's update path: a real update runs in a
fresh interpreter with pickle's loaders booby-trapped, and afterwards neither
torch nor any pickle call shows up; the update modules' sources say the same."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from edge_runtime.update.store import BundleStore

REPO = Path(__file__).resolve().parents[2]
UPDATE_PATH = ["models/signing.py", "models/bundle.py", "edge_runtime/matcher.py",
               *sorted(p.relative_to(REPO).as_posix()
                       for p in (REPO / "edge_runtime" / "update").glob("*.py"))]


def _update_in_child(broker, tmp_path, site, *extra: str) -> dict:
    """Run one v1 -> v2 update in a fresh interpreter (upd_isolation_child.py)
    and return its report."""
    root = tmp_path / "store"
    BundleStore(root).init_from(site.root / "v1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "upd_isolation_child.py"),
                          str(broker.port), str(root), str(site.keys.pub), site.url("v2"),
                          site.sig("v2"), *extra], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_update_in_fresh_interpreter_imports_no_torch_and_unpickles_nothing(broker, tmp_path, site):
    report = _update_in_child(broker, tmp_path, site)
    assert report["last_update"]["state"] == "active", report["last_update"]
    assert report["active"] == 2
    assert report["pickle_calls"] == []
    assert not [m for m in report["modules"] if m == "torch" or m.startswith("torch.")]


def test_a_new_release_is_verified_in_another_process(broker, tmp_path, site):
    """Before: the kiosk's own process hashed every file and parsed items.json
    beside the camera loop, holding the GIL for tens of milliseconds (frame
    waits of 41-85 ms against 33 ms). Here those functions raise inside the
    kiosk's process once its first bundle is open, and the update succeeds."""
    report = _update_in_child(broker, tmp_path, site, "trap-verify")
    assert report["last_update"]["state"] == "active", report["last_update"]
    assert report["active"] == 2 and report["pickle_calls"] == []


def test_update_modules_never_unpickle():
    bad = re.compile(r"^\s*import torch|^\s*from torch|pickle\.loads?\(|allow_pickle\s*=\s*True|"
                     r"torch\.load|joblib", re.M)
    hits = {f: bad.findall((REPO / f).read_text()) for f in UPDATE_PATH if (REPO / f).exists()}
    assert not {f: h for f, h in hits.items() if h}
