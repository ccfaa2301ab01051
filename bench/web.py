"""Does the set-up page slow the frame loop? Frame-loop throughput on a clip,
side by side: no page, the page with nobody watching, the page with a viewer
on the live view.

    flock /tmp/bench.lock python bench/web.py                    # sample/clip.mp4, sample/bundle
    flock /tmp/bench.lock python bench/web.py --clip CLIP --bundle BUNDLE --rounds 7

Each run is the kiosk's own pipeline (as edge-runtime run builds it, events
to an in-memory sink) over the clip, looped to ``--frames`` frames, as fast as the CPU allows, so any
time the page takes from the loop shows as fewer frames per second. With
the page on, its server (web.py) runs in the same process on a loopback
port; "viewer" is a separate process reading /stream.mjpg for the whole
run, as a phone would. The three settings are run in turn, in a rotated
order each round; reported are the medians over the rounds, their ratio to
"no page", and the ratio to "no page" within each round (median and range:
robust to the machine's load drifting between rounds). Results: bench/results/web.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from runtime import Sink  # noqa: E402

SETTINGS = ("no page", "page, nobody watching", "page, one viewer")
VIEWER = ("import sys, urllib.request\n"
          "r = urllib.request.urlopen(sys.argv[1])\n"
          "while r.read(65536):\n    pass\n")


def one_run(matcher, clip: Path, cfg, setting: str, frames: int) -> dict:
    from edge_runtime.cmd_run import build_presenter
    from edge_runtime.config import SourceConfig
    from edge_runtime.decision import Decider, DecisionParams
    from edge_runtime.pipeline import Pipeline, PipelineOptions
    from edge_runtime.sources import open_source
    from edge_runtime.web import WebContext, WebServer, create_app
    from edge_runtime.web_hub import LiveHub

    d = cfg.decision
    src = open_source(SourceConfig(uri=str(clip), loop=True))
    sink = Sink()
    hub = server = viewer = None
    if setting != "no page":
        hub = LiveHub(max_fps=cfg.web.stream_fps)
    p = Pipeline(src, matcher, Decider(DecisionParams(threshold=matcher.threshold)), sink,
                 PipelineOptions(kiosk_id="bench", camera_id="cam", top_k=d.top_k,
                                 max_batch=cfg.backend.max_batch),
                 presenter=build_presenter(cfg), live=hub)
    sink.pipeline = p
    if hub is not None:
        ctx = WebContext(hub, status=dict, relearn=p.request_relearn)
        server = WebServer("127.0.0.1", 0, create_app(ctx), hub).start()
        if setting == "page, one viewer":
            viewer = subprocess.Popen([sys.executable, "-c", VIEWER, f"{server.url}stream.mjpg"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while hub.viewers < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert hub.viewers == 1, "the viewer did not connect"
    try:
        src.start()
        t0 = time.perf_counter()
        p.run(threading.Event(), frames)
        wall = time.perf_counter() - t0
        src.stop()
    finally:
        if viewer is not None:
            viewer.terminate()
            viewer.wait(10)
        if server is not None:
            server.stop()
    return {"setting": setting, "frames": p.frames, "wall_s": round(wall, 3),
            "fps": round(p.frames / wall, 2), "events": len(sink.events),
            "kept_for_page": hub.taken if hub is not None else 0}


def _fps(runs: list[dict], rnd: int, setting: str) -> float:
    return next(x["fps"] for x in runs if x["round"] == rnd and x["setting"] == setting)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=REPO / "sample" / "clip.mp4")
    ap.add_argument("--bundle", type=Path, default=REPO / "sample" / "bundle")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=4800, help="frames per run (the clip looped)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from edge_runtime.cmd_run import Kiosk
    from edge_runtime.config import KioskConfig, apply_overrides

    cfg = apply_overrides(KioskConfig(), {"backend.kind": "onnxruntime",
                                          "backend.threads": args.threads,
                                          "bundle.path": args.bundle})
    matcher = Kiosk(cfg).open_matcher(args.bundle)
    runs = []
    try:
        one_run(matcher, args.clip, cfg, "no page", 600)   # warm-up (page cache, ONNX Runtime)
        for r in range(args.rounds):
            order = SETTINGS[r % 3:] + SETTINGS[:r % 3]
            for setting in order:
                runs.append({"round": r, **one_run(matcher, args.clip, cfg, setting, args.frames)})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        matcher.close()
    med = {s: statistics.median(x["fps"] for x in runs if x["setting"] == s) for s in SETTINGS}
    paired = {s: sorted(round(_fps(runs, r, s) / _fps(runs, r, "no page"), 3)
                        for r in range(args.rounds)) for s in SETTINGS}
    result = {"clip": str(args.clip), "bundle": str(args.bundle), "rounds": args.rounds,
              "frames_per_run": args.frames,
              "threads": args.threads, "stream_fps": cfg.web.stream_fps,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "median_fps": med,
              "ratio_to_no_page": {s: round(med[s] / med["no page"], 3) for s in SETTINGS},
              "paired_ratios": paired,
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "web.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Frame loop with and without the page ({args.clip.name}, {args.rounds} rounds)", "",
             f"Machine: {result['machine']}; ONNX Runtime, {args.threads} threads; live view "
             f"capped at {cfg.web.stream_fps:g} fps.", "",
             "| setting | median frames/s | ratio of medians | same-round ratios: median (range) "
             "| runs (frames/s) |",
             "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        fps = ", ".join(f"{x['fps']:.1f}" for x in runs if x["setting"] == s)
        pr = paired[s]
        lines.append(f"| {s} | {med[s]:.1f} | {result['ratio_to_no_page'][s]:.3f} | "
                     f"{statistics.median(pr):.3f} ({pr[0]:.3f}-{pr[-1]:.3f}) | {fps} |")
    (args.out / "web.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
