"""Benchmark: remote updates of a 10,000-item bundle while the camera loop runs.

Builds releases (the tiny ONNX encoder of tests/updates/upd_synth.py and
10,000 random catalogue vectors each, plus the synthetic products so the
self-test has real probes), signs them, serves them with `deploy serve`'s
server on loopback, starts a real Mosquitto and a kiosk (real KioskMqtt with
its outbox, Pipeline, Matcher, Updater, bundle store) whose camera loop runs
paced at 30 fps (33.3 ms) on a looping folder of frames. Each run sends one
update command and measures: command -> active (end to end), the phases the
updater reports, and the frame waits (the gap between two processed frames):
the longest during the update, and, as a control on this shared machine, the
longest during an equally long stretch just before it with no update.

Reported over all runs: the max and the median of the per-run maxima, for
the update and for the control. Target: the longest frame wait during an
update <= 40 ms. Run it alone: `flock /tmp/bench.lock python bench/update.py`.

    python bench/update.py [--runs 20] [--items 10000] [--fps 30] [--out bench/results/update]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "updates")]

from support import Broker, make_product_photos  # noqa: E402
from upd_harness import KioskUnderTest, Operator, frame_folder  # noqa: E402
from upd_synth import build_bundle  # noqa: E402

from deploy.serve import serve_in_thread  # noqa: E402
from deploy.sign import sign_bundle  # noqa: E402
from edge_runtime.update.commands import make_update_command  # noqa: E402
from edge_runtime.update.store import BundleStore  # noqa: E402
from models.signing import write_keypair  # noqa: E402

TARGET_MS = 40.0


def _gaps(stamps: list[float], start: float, end: float) -> list[float]:
    """Frame waits (ms) of the frames processed between ``start`` and ``end``."""
    return [(b - a) * 1000 for a, b in zip(stamps, stamps[1:], strict=False) if start <= b <= end]


def run_once(work: Path, site: Path, base: str, pub: Path, frames: Path, version: int) -> dict:
    broker = Broker(work / f"broker{version}").start()
    store = BundleStore(work / f"store{version}")
    store.init_from(site / "v1")
    kiosk = KioskUnderTest(broker, store, [pub], [base], kiosk_id="bench", frames=frames)
    stamps: list[float] = []
    orig = kiosk.pipeline.process

    def timed(batch):
        out = orig(batch)
        stamps.append(time.monotonic())
        return out

    kiosk.pipeline.process = timed
    op = Operator(broker, topics=("kiosk/+/update/status",))  # a kiosk hosts no subscriber
    try:
        time.sleep(1.5)  # steady state
        cmd = make_update_command(f"{base}v{version}/manifest.json",
                                  (site / f"v{version}" / "manifest.sig").read_text())
        t_send = time.monotonic()
        op.send("bench", "update", cmd)
        final = op.wait_final(cmd["command_id"], timeout=300)
        t_done = time.monotonic()
        time.sleep(0.5)
    finally:
        op.close()
        kiosk.close()
        broker.stop()
    assert final["state"] == "active", final
    during = _gaps(stamps, t_send, t_done)
    control = _gaps(stamps, t_send - (t_done - t_send), t_send)
    return {"end_to_end_s": t_done - t_send, **final["timings"],
            "gap_ms_median": statistics.median(during), "gap_ms_max_update": max(during),
            "gap_ms_max_control": max(control) if control else float("nan"),
            "frames_during_update": len(during)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--dim", type=int, default=128, help="embedding size of the releases")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key, pub, _ = write_keypair(work / "keys")
        catalogue = make_product_photos(work / "catalogue", n_items=4, per_item=3)
        frames = frame_folder(catalogue, work / "frames", repeat=4)
        site = work / "site"
        t = time.monotonic()
        for v in range(1, args.runs + 2):
            build_bundle(site / f"v{v}", catalogue, version=v, dim=args.dim, seed=v,
                         extra=args.items, n_trees=10)
            sign_bundle(site / f"v{v}", key)
        size = sum(p.stat().st_size for p in (site / "v2").iterdir())
        print(f"built {args.runs + 1} releases of {args.items} items x {args.dim}-d "
              f"({size / 1e6:.1f} MB each) in {time.monotonic() - t:.1f} s", flush=True)
        server, base = serve_in_thread(site)
        results = []
        try:
            for v in range(2, args.runs + 2):
                r = run_once(work, site, base, pub, frames, v)
                print(json.dumps({k: round(x, 4) if isinstance(x, float) else x
                                  for k, x in r.items()}), flush=True)
                results.append(r)
        finally:
            server.shutdown()
            server.server_close()
    summary = _summary(results, args, size, load_before, os.getloadavg())
    print("\n" + summary)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        args.out.with_suffix(".md").write_text(summary + "\n")
    return 0


def _summary(results: list[dict], args, size: int, load0, load1) -> str:
    upd = [r["gap_ms_max_update"] for r in results]
    ctl = [r["gap_ms_max_control"] for r in results]
    med = {k: statistics.median(r[k] for r in results if k in r)
           for k in ("end_to_end_s", "verify_s", "download_s", "verify_process_s", "test_s",
                     "swap_s", "gap_ms_median")}
    lines = [
        f"# Update benchmark (`bench/update.py`), {time.strftime('%Y-%m-%d')}",
        "",
        f"{len(results)} runs; {args.items}-item releases ({size / 1e6:.1f} MB); frame loop paced "
        f"at {args.fps:g} fps; {platform.machine()} CPU with {os.cpu_count()} cores, no GPU; "
        f"load average {load0[0]:.1f} before, {load1[0]:.1f} after (shared machine).",
        "",
        "| longest frame wait, ms | max over runs | median of per-run maxima |",
        "|---|---|---|",
        f"| during the update | {max(upd):.1f} | {statistics.median(upd):.1f} |",
        f"| control: as long, just before, no update | {max(ctl):.1f} | "
        f"{statistics.median(ctl):.1f} |",
        "",
        f"Target: <= {TARGET_MS:g} ms during the update: "
        f"{'met' if max(upd) <= TARGET_MS else 'NOT met'} "
        f"({sum(u <= TARGET_MS for u in upd)} of {len(upd)} runs within it).",
        "",
        "| step (median) | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.3f} |" for k, v in med.items() if k != "gap_ms_median"),
        "",
        f"Median frame wait during the update: {med['gap_ms_median']:.1f} ms.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
