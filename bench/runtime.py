"""Runtime benchmark: the kiosk pipeline on a clip, as a new kiosk runs it.

    python bench/runtime.py --bundle BUNDLE [--run RUN_DIR] [--threads 2]
    python bench/runtime.py --bundle BUNDLE --clip bench/clips/train-clip.mp4   # bench/make_clip.py
    python bench/runtime.py --bundle BUNDLE --roi 200,100,240,240 --set crop.margins=[0.0]

BUNDLE is a bundle indexed from the Grocery train split (item ids are folder
paths like Fruit/Apple/Granny-Smith); the clip's csv gives the showings (class
ids of classes.csv, or item ids). The runtime runs with the default kiosk
configuration (no region of interest) unless ``--roi`` / ``--set key=value``
change it. Reported, in one run on this machine:

1. throughput, frames/s, the whole clip as fast as possible (decode in the
   capture thread, scene model, framing, encoder, search and decision on the
   main thread), and the share of frames that were encoded;
2. frame-to-publish latency p50/p99 with the clip paced at its 30 fps (as a
   camera would deliver it), and the frames the pipeline had to skip;
3. the encoder alone: ONNX Runtime vs PyTorch eager with the same weights
   (``--run``: the trainer run the bundle was exported from), batch 1 and 8;
4. the encoder's FLOPs per frame (counted from the ONNX graph) and the FLOP/s
   it reaches, against a large single-precision matrix multiply;
5. events against the ground truth (bench/scoring.py: strict precision, one
   right event per showing, recall, events on the empty counter, decision
   latency from the start of the showing), for the default settings and for
   the latency/certainty trade (``min_views`` x ``lead``) replayed on the
   same recorded views.

Results: bench/results/runtime-CLIPNAME.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

import numpy as np  # noqa: E402
from scoring import load_segments, record, replay, score_events  # noqa: E402

# ------------------------------------------------------------------ pipeline runs

class Sink:
    """In-memory publisher: the pipeline hands events over exactly as to KioskMqtt;
    ``published`` records the frame being processed when each was sent."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.published: list[int] = []
        self.pipeline = None

    def publish_json(self, subtopic: str, payload: dict, qos: int = 1, retain: bool = False) -> None:
        if subtopic == "match":
            self.events.append(payload)
            self.published.append(self.pipeline.frames if self.pipeline is not None else -1)


def run_pipeline(matcher, clip: Path, cfg, *, realtime: bool, max_frames: int | None) -> dict:
    """The kiosk's own pipeline (as edge-runtime run builds it) over the clip."""
    from edge_runtime.cmd_run import build_presenter
    from edge_runtime.config import SourceConfig
    from edge_runtime.decision import Decider, DecisionParams
    from edge_runtime.pipeline import Pipeline, PipelineOptions
    from edge_runtime.sources import open_source

    d = cfg.decision
    roi = (cfg.roi.x, cfg.roi.y, cfg.roi.w, cfg.roi.h) if cfg.roi.enabled else None
    src = open_source(SourceConfig(uri=str(clip), realtime=realtime))
    sink = Sink()
    presenter = build_presenter(cfg)
    p = Pipeline(src, matcher, Decider(DecisionParams(
        threshold=matcher.threshold, margin=d.margin, window=d.window, min_frames=d.min_frames,
        cooldown_s=d.cooldown_s)), sink, PipelineOptions(
        kiosk_id="bench", camera_id="val", top_k=d.top_k, max_batch=cfg.backend.max_batch,
        aggregate=d.aggregate, roi=roi, threshold=d.threshold), presenter=presenter)
    sink.pipeline = p
    src.start()
    t0 = time.perf_counter()
    p.run(threading.Event(), max_frames)
    wall = time.perf_counter() - t0
    src.stop()
    lat = np.asarray(p.stats.latencies())
    events = [(e["frame_index"], e["item_id"]) for e in sink.events]
    encoded = presenter.encoded_frames if presenter is not None else p.frames
    return {"frames": p.frames, "wall_s": round(wall, 2), "fps": round(p.frames / wall, 1),
            "encoded_frames": encoded,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            "dropped_frames": src.dropped, "unknown_presentations": p.stats.unknowns,
            "events": events, "published": sink.published}


def trade_off(matcher, clip: Path, cfg, segs) -> dict:
    """Latency against certainty: the tracker replayed on the same recorded views
    for min_views x lead (the other settings as configured)."""
    from dataclasses import replace

    from edge_runtime.cmd_run import build_presenter

    base = build_presenter(cfg).tracker.p
    base = replace(base, threshold=float(cfg.decision.threshold if cfg.decision.threshold
                                         is not None else matcher.threshold))
    frames = record(matcher, clip, cfg)
    out = {}
    for min_views in (1, 2, 3, 5, 8):
        for lead in (0.0, 0.1, 0.2, 0.3):
            params = replace(base, min_views=min_views, lead=lead, leave_lead=lead)
            events, published, unknown, used = replay(matcher, frames, params)
            r = score_events(events, segs, published)
            r.update({"unknown": unknown, "views_encoded": used})
            out[f"min_views={min_views} lead={lead}"] = r
    return out


# ------------------------------------------------------------------ encoder alone

def time_call(fn, min_s: float = 1.0, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_s
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def encoder_speeds(bundle: Path, manifest, run: Path | None, threads: int) -> dict:
    """ms per image, ``{"ort": {threads: {batch: ms}}, "torch": ...}``, at 1 and
    ``threads`` threads (one framework at a time: idle thread pools of the other
    would steal the cores; on a shared 2-core machine PyTorch at 2 threads
    measured ~100x slower than at 1)."""
    from edge_runtime.encoders.onnx_backend import OnnxEncoder

    s = manifest.input.size
    rng = np.random.default_rng(0)
    x8 = rng.normal(0, 1, (8, 3, s, s)).astype(np.float32)
    out: dict = {"ort": {}, "torch": {}}
    counts = sorted({1, threads})
    ref_ort = None
    for n in counts:
        enc = OnnxEncoder(bundle / manifest.encoder.file, manifest.input, manifest.embedding_size,
                          threads=n, providers=["CPUExecutionProvider"])
        out["ort"][n] = {b: round(time_call(lambda b=b, e=enc: e.encode(x8[:b])) * 1000 / b, 3)
                         for b in (1, 8)}
        ref_ort = enc.encode(x8)
        enc.close()
    if run is None:
        out["torch"] = "not measured (give --run RUN_DIR)"
        return out
    import torch

    from trainer.checkpoint import load_model

    model, net, run_id = load_model(run)
    if run_id != manifest.encoder.run_id:
        out["warning"] = f"run {run_id} is not the bundle's encoder run {manifest.encoder.run_id}"
    encoder = model.encoder.eval()
    with torch.inference_mode():
        ref_torch = encoder(torch.from_numpy(x8)).numpy()
        diff = float(np.abs(ref_torch - ref_ort).max())
        out["max_abs_diff_vs_ort"] = diff
        # An INT8 export is checked as the exporter checks it: by cosine.
        int8 = getattr(manifest.encoder, "precision", "fp32") == "int8"
        cos = float(np.min(np.sum(ref_torch * ref_ort, axis=1)))
        if (int8 and cos < 0.97) or (not int8 and diff > 1e-3):
            out["warning"] = (f"{out.get('warning', '')} the run's weights do not reproduce the "
                              f"bundle's encoder (max abs diff {diff:.3g}): retrained since export?"
                              ).strip()
        for n in counts:
            torch.set_num_threads(n)
            out["torch"][n] = {b: round(time_call(lambda b=b: encoder(torch.from_numpy(x8[:b])))
                                        * 1000 / b, 3) for b in (1, 8)}
    return out


def onnx_flops(path: Path) -> float:
    """Multiply-adds x2 of Conv, Gemm and MatMul nodes at batch 1 (the rest is
    a rounding error for a conv encoder)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim0.Clear()
    dim0.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    flops = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = inits.get(node.input[1]) or shapes.get(node.input[1])
            o = shapes.get(node.output[0])
            if w and o:
                flops += 2.0 * np.prod(w) * np.prod(o[2:])
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0])
            b = inits.get(node.input[1]) or shapes.get(node.input[1])
            if a and b:
                flops += 2.0 * np.prod(a) * b[-1 if node.op_type == "MatMul" else 0]
    return flops


def sgemm_gflops(n: int = 2048) -> float:
    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    b = a.T.copy()
    return 2 * n**3 / time_call(lambda: a @ b, min_s=2.0) / 1e9


# ------------------------------------------------------------------ main

def kiosk_config(roi: str, overrides: list[str]):
    """The default kiosk configuration, with an optional ROI and key=value overrides
    (values parsed as JSON where they are JSON: numbers, lists, booleans)."""
    from edge_runtime.config import KioskConfig, apply_overrides

    over: dict = {}
    if roi != "none":
        x, y, w, h = (int(v) for v in roi.split(","))
        over.update({"roi.x": x, "roi.y": y, "roi.w": w, "roi.h": h})
    for item in overrides:
        key, _, value = item.partition("=")
        try:
            over[key] = json.loads(value)
        except ValueError:
            over[key] = value
    return apply_overrides(KioskConfig(), over)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--run", type=Path, help="trainer run the bundle was exported from (PyTorch side)")
    ap.add_argument("--clip", type=Path, default=DATA / "kiosk-clips" / "val-clip.mp4")
    ap.add_argument("--csv", type=Path, help="ground truth (default: the clip's .csv)")
    ap.add_argument("--classes", type=Path, default=DATA / "grocery" / "classes.csv")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--paced-frames", type=int, default=None, help="limit the 30 fps part")
    ap.add_argument("--roi", default="none",
                    help="x,y,w,h: an outer region of interest (default none, as a new kiosk)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a kiosk.toml override, e.g. decision.min_views=5 or crop.margins=[0.1]")
    ap.add_argument("--no-trade-off", action="store_true", help="skip the min_views x lead replay")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="events only: skip the paced run and the encoder timings (no need for "
                    "/tmp/bench.lock; the throughput figure is then not a measurement)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from edge_runtime.encoders.select import open_encoder
    from edge_runtime.matcher import Matcher
    from models.bundle import read_manifest

    cfg = kiosk_config(args.roi, args.set)
    clip_csv = args.csv or args.clip.with_suffix(".csv")
    segs = load_segments(clip_csv, args.classes)
    m = read_manifest(args.bundle)
    encoder = open_encoder(args.bundle, m, "onnxruntime", threads=args.threads,
                           max_batch=max(8, args.max_batch))
    matcher = Matcher.open(args.bundle, encoder=encoder, threshold=cfg.decision.threshold)
    known = {i for i, _ in matcher.items}
    missing = sorted({s[2] for s in segs if s[2] is not None} - known)

    print("throughput (as fast as possible)...", flush=True)
    fast = run_pipeline(matcher, args.clip, cfg, realtime=False, max_frames=None)
    flops = onnx_flops(args.bundle / m.encoder.file)
    if args.accuracy_only:
        paced = {k: None for k in ("frames", "latency_ms_p50", "latency_ms_p99", "dropped_frames")}
        speeds: dict = {"ort": "not measured (--accuracy-only)", "torch": "not measured"}
        gemm = float("nan")
    else:
        print(f"  {fast['fps']} fps; paced at 30 fps...", flush=True)
        paced = run_pipeline(matcher, args.clip, cfg, realtime=True, max_frames=args.paced_frames)
        print(f"  p99 {paced['latency_ms_p99']} ms; encoder alone...", flush=True)
        speeds = encoder_speeds(args.bundle, m, args.run, args.threads)
        gemm = sgemm_gflops()
    variants = {}
    if not args.no_trade_off:
        print("  latency/certainty replay...", flush=True)
        variants = trade_off(matcher, args.clip, cfg, segs)
    matcher.close()

    if args.accuracy_only:
        fast["fps"] = f"{fast['fps']} (not a measurement: --accuracy-only)"
    acc = score_events(fast["events"], segs, fast["published"])
    acc["unknown_presentations"] = fast["unknown_presentations"]
    ort1 = speeds["ort"][args.threads][1] if isinstance(speeds["ort"], dict) else float("nan")
    result = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "threads": args.threads},
        "bundle": {"path": str(args.bundle), "bundle_version": m.bundle_version,
                   "run_id": m.encoder.run_id, "input_px": m.input.size,
                   "embedding_size": m.embedding_size, "items": m.item_count,
                   "vectors": m.index.n_vectors, "threshold": matcher.threshold,
                   "clip_items_not_in_bundle": missing},
        "clip": str(args.clip), "settings": {"roi": args.roi, "set": args.set},
        "throughput": {k: v for k, v in fast.items() if k not in ("events", "published")},
        "paced_30fps": {k: v for k, v in paced.items() if k not in ("events", "published")},
        "encoder_ms_per_image": speeds,
        "flops": {"encoder_gflop_per_frame": round(flops / 1e9, 3),
                  "encoder_gflops_ort_b1": round(flops / (ort1 / 1000) / 1e9, 1),
                  "sgemm_gflops": round(gemm, 1)},
        "accuracy_default": acc,
        "trade_off": variants,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"runtime-{args.clip.stem}-{m.encoder.run_id}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    t, p, s, f = r["throughput"], r["paced_30fps"], r["encoder_ms_per_image"], r["flops"]
    n = r["machine"]["threads"]

    def speed(table) -> str:
        if isinstance(table, str):
            return table
        return "; ".join(f"{k} thr: {v[1]} ms (b1), {v[8]} ms/img (b8)" for k, v in table.items())

    b, a = r["bundle"], r["accuracy_default"]
    lines = [
        f"# Runtime benchmark (bench/runtime.py): {Path(r['clip']).name}", "",
        f"Machine: {r['machine']['cpu_count']} CPUs, {r['machine']['platform']}, {n} ONNX Runtime "
        f"threads in the pipeline. Bundle v{b['bundle_version']} (run {b['run_id']}, "
        f"{b['input_px']} px, {b['embedding_size']}-d, {b['items']} items, {b['vectors']} vectors, "
        f"threshold {b['threshold']}). Settings: defaults, ROI {r['settings']['roi']}"
        + (f", {', '.join(r['settings']['set'])}" if r["settings"]["set"] else "") + ".", "",
        "| measure | value | target |", "|---|---|---|",
        f"| throughput, as fast as possible | {t['fps']} frames/s ({t['frames']} frames, "
        f"{t['encoded_frames']} encoded) | >= 120 |",
        f"| frame-to-publish latency at 30 fps, p50 / p99 | {p['latency_ms_p50']} / "
        f"{p['latency_ms_p99']} ms ({p['frames']} frames, {p['dropped_frames']} skipped) | p99 < 30 ms |",
        f"| encoder, ONNX Runtime | {speed(s['ort'])} | |",
        f"| encoder, PyTorch eager | {speed(s['torch'])} | |",
        f"| encoder FLOPs per frame | {f['encoder_gflop_per_frame']} GFLOP | |",
        f"| encoder FLOP/s (ORT b1, {n} thr) vs sgemm | {f['encoder_gflops_ort_b1']} vs "
        f"{f['sgemm_gflops']} GFLOP/s | |",
        f"| event precision / recall | {a['precision']} / {a['recall']} ({a['events']} events, "
        f"{a['found']}/{a['showings']} products, {a['unknown_presentations']} unknown) | 0.95 / 0.90 |",
        f"| events on the empty counter (outside any showing) | {a['empty_events']} "
        f"({a['outside_events']}) | 0 |",
        f"| decision latency from the start of the showing, p50 / p90 | "
        f"{a.get('latency_ms_p50')} / {a.get('latency_ms_p90')} ms | |",
    ]
    if r["trade_off"]:
        lines += ["", "Latency against certainty, replayed on the same recorded views:", "",
                  "| variant | events | precision | recall | empty (outside) | unknown | latency p50 / p90 ms | views encoded |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, v in r["trade_off"].items():
            lines.append(f"| {name} | {v['events']} | {v['precision']} | {v['recall']} | "
                         f"{v['empty_events']} ({v['outside_events']}) | {v['unknown']} | "
                         f"{v.get('latency_ms_p50')} / "
                         f"{v.get('latency_ms_p90')} | {v['views_encoded']} |")
    if s.get("warning"):
        lines += ["", f"Warning: {s['warning']}"]
    if b["clip_items_not_in_bundle"]:
        lines += ["", f"Clip items missing from the bundle: {b['clip_items_not_in_bundle']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
