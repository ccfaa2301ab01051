"""Benchmark: one remote update of a 10,000-item bundle, end to end, here.

Builds two releases (the tiny ONNX encoder of tests/updates/upd_synth.py and
10,000 random catalogue vectors each, plus the synthetic products so the
self-test has real probes), signs them, serves them with `deploy serve`'s
server on loopback, starts a real Mosquitto, a kiosk (real KioskMqtt,
Pipeline, Matcher, Updater, bundle store) whose camera loop runs paced at
30 fps on a looping folder of frames, then sends the update command and
measures: command -> active (end to end), the phases the updater reports
(verify, download, test = commit + open + self-test, swap), and how the frame
loop fared: the longest gap between two processed frames and the worst
capture-to-decision latency, before, during and around the swap.

    python bench/update.py [--items 10000] [--fps 30] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
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


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run_once(work: Path, site: Path, base: str, pub: Path, catalogue: Path, version: int,
             fps: float) -> dict:
    broker = Broker(work / f"broker{version}").start()
    store = BundleStore(work / f"store{version}")
    store.init_from(site / "v1")
    frames = frame_folder(catalogue, work / f"frames{version}", repeat=4)
    kiosk = KioskUnderTest(broker, store, [pub], [base], kiosk_id="bench", frames=frames)
    stamps: list[float] = []
    orig = kiosk.pipeline.process

    def timed(batch):
        out = orig(batch)
        stamps.append(time.monotonic())
        return out

    kiosk.pipeline.process = timed
    swap_at: list[float] = []
    orig_swap = kiosk.pipeline.swap_matcher

    def timed_swap(new):
        t = time.monotonic()
        old = orig_swap(new)
        swap_at.append(t)
        swap_at.append(time.monotonic())
        return old

    kiosk.pipeline.swap_matcher = timed_swap
    op = Operator(broker)
    try:
        time.sleep(3.0)  # steady state
        cmd = make_update_command(f"{base}v{version}/manifest.json",
                                  (site / f"v{version}" / "manifest.sig").read_text())
        t_send = time.monotonic()
        op.send("bench", "update", cmd)
        final = op.wait_final(cmd["command_id"], timeout=300)
        t_done = time.monotonic()
        time.sleep(1.5)
    finally:
        op.close()
        kiosk.close()
        broker.stop()
    assert final["state"] == "active", final
    timings = final["timings"]
    gaps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:], strict=False)]
    times = stamps[1:]
    pairs = list(zip(gaps, times, strict=True))
    before = [g for g, t in pairs if t < t_send]
    during = [g for g, t in pairs if t_send <= t <= t_done]
    # the gap that contains the swap: last frame before it -> first frame after it
    swap_gap = next(g for g, t in pairs if t >= swap_at[1])
    swap_wait_ms = (swap_at[1] - swap_at[0]) * 1000  # swap_matcher waiting for the batch
    return {"end_to_end_s": t_done - t_send, **timings,
            "gap_ms_median_before": statistics.median(before),
            "gap_ms_max_before": max(before), "gap_ms_max_during_update": max(during),
            "gap_ms_p99_during_update": _pct(during, 0.99),
            "gap_ms_at_swap": swap_gap, "swap_matcher_ms": swap_wait_ms,
            "frames_during_update": len(during)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dim", type=int, default=128, help="embedding size of the releases")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        key, pub, _ = write_keypair(work / "keys")
        catalogue = make_product_photos(work / "catalogue", n_items=4, per_item=3)
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
                r = run_once(work, site, base, pub, catalogue, v, args.fps)
                print(json.dumps({k: round(x, 4) if isinstance(x, float) else x
                                  for k, x in r.items()}), flush=True)
                results.append(r)
        finally:
            server.shutdown()
            server.server_close()
    keys = ["end_to_end_s", "verify_s", "download_s", "test_s", "swap_s", "gap_ms_median_before",
            "gap_ms_max_before", "gap_ms_max_during_update", "gap_ms_p99_during_update",
            "gap_ms_at_swap", "swap_matcher_ms"]
    print(f"\nmedian of {len(results)} runs ({args.items} items, {size / 1e6:.1f} MB, "
          f"frame loop paced at {args.fps:g} fps):")
    for k in keys:
        print(f"  {k:28s} {statistics.median(r[k] for r in results):10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
