"""Runtime benchmark: the kiosk pipeline on the val clip, side by side.

    python bench/runtime.py --bundle BUNDLE [--run RUN_DIR] [--threads 2]
    python bench/runtime.py --bundle BUNDLE --paced-frames 900     # shorter paced part

BUNDLE is a bundle indexed from the Grocery train split (item ids are folder
paths like Fruit/Apple/Granny-Smith); the clip's csv gives class ids of
classes.csv, mapped to item ids through each class's iconic-image path.
Reported, in one run on this machine:

1. throughput, frames/s, the whole clip as fast as possible (decode in the
   capture thread, encode + search + decision on the main thread);
2. frame-to-publish latency p50/p99 with the clip paced at its 30 fps (as a
   camera would deliver it), and the frames the pipeline had to skip;
3. the encoder alone: ONNX Runtime vs PyTorch eager with the same weights
   (``--run``: the trainer run the bundle was exported from), batch 1 and 8;
4. the encoder's FLOPs per frame (counted from the ONNX graph) and the FLOP/s
   it reaches, against a large single-precision matrix multiply;
5. event precision/recall against the ground truth (an event is right when
   its top item is the product in view at its frame_index; a product segment
   is found when it has at least one right event), for the default decision
   settings and for embedding aggregation over k = 1, 3, 5 frames (replayed
   on the same embeddings).

Results: bench/results/runtime.md and runtime.json.
"""

from __future__ import annotations

import argparse
import csv
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

# ------------------------------------------------------------------ ground truth

def class_items(classes_csv: Path) -> dict[int, str]:
    """Fine class id -> item id (the folder path of its iconic image)."""
    out = {}
    with open(classes_csv, newline="") as f:
        for row in csv.DictReader(f):
            iconic = row["Iconic Image Path (str)"].strip("/").split("/")
            out[int(row["Class ID (int)"])] = "/".join(iconic[1:-1])
    return out


def load_segments(clip_csv: Path, classes_csv: Path) -> list[tuple[int, int, str | None]]:
    """(first, last, item id) per product held up; item None: an object that is
    in no catalogue (bench/make_clip.py's card), where no event is right."""
    items = class_items(classes_csv)
    with open(clip_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    segs = []
    for r in rows:
        if "item_id" in r:
            item = r["item_id"] or None
        else:
            item = items[int(r["class_id"])]
        segs.append((int(r["start_frame"]), int(r["end_frame"]), item))
    return segs


def score_events(events: list[tuple[int, str]], segs: list[tuple[int, int, str]]) -> dict:
    """Precision: events whose item is the one in view at their frame. Recall:
    segments with at least one right event."""
    def in_view(i: int) -> tuple[int, str] | None:
        return next(((k, s[2]) for k, s in enumerate(segs) if s[0] <= i <= s[1]), None)

    right, found = 0, set()
    for frame, item in events:
        hit = in_view(frame)
        if hit is not None and hit[1] == item:
            right += 1
            found.add(hit[0])
    n = len(events)
    return {"events": n, "right": right, "precision": round(right / n, 3) if n else None,
            "segments": len(segs), "found": len(found), "recall": round(len(found) / len(segs), 3)}


# ------------------------------------------------------------------ pipeline runs

class Sink:
    """In-memory publisher: the pipeline hands events over exactly as to KioskMqtt."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def publish_json(self, subtopic: str, payload: dict, qos: int = 1, retain: bool = False) -> None:
        self.events.append(payload)


def run_pipeline(matcher, clip: Path, *, realtime: bool, max_frames: int | None,
                 max_batch: int, aggregate: int, roi=None, publisher=None) -> dict:
    from edge_runtime.config import DecisionConfig, SourceConfig
    from edge_runtime.decision import Decider, DecisionParams
    from edge_runtime.pipeline import Pipeline, PipelineOptions
    from edge_runtime.sources import open_source

    d = DecisionConfig(aggregate=aggregate)
    src = open_source(SourceConfig(uri=str(clip), realtime=realtime))
    sink = publisher or Sink()
    p = Pipeline(src, matcher, Decider(DecisionParams(
        threshold=matcher.threshold, margin=d.margin, window=d.window, min_frames=d.min_frames,
        cooldown_s=d.cooldown_s)), sink, PipelineOptions(kiosk_id="bench", camera_id="val",
        top_k=d.top_k, max_batch=max_batch, aggregate=aggregate, roi=roi))
    src.start()
    t0 = time.perf_counter()
    p.run(threading.Event(), max_frames)
    wall = time.perf_counter() - t0
    src.stop()
    lat = np.asarray(p.stats.latencies())
    events = [(e["frame_index"], e["item_id"]) for e in getattr(sink, "events", [])]
    return {"frames": p.frames, "wall_s": round(wall, 2), "fps": round(p.frames / wall, 1),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            "dropped_frames": src.dropped, "events": events}


def clip_embeddings(matcher, clip: Path, roi=None, batch: int = 8) -> np.ndarray:
    """Every frame's embedding, for replaying decision variants."""
    import cv2

    from edge_runtime.sources import crop_roi

    cap = cv2.VideoCapture(str(clip))
    out, buf = [], []
    while True:
        ok, img = cap.read()
        if ok:
            buf.append(crop_roi(img, roi))
        if buf and (len(buf) == batch or not ok):
            out.append(matcher.encode(buf))
            buf = []
        if not ok:
            break
    cap.release()
    return np.concatenate(out)


def replay(matcher, emb: np.ndarray, aggregate: int, fps: float = 30.0) -> list[tuple[int, str]]:
    from edge_runtime.config import DecisionConfig
    from edge_runtime.decision import Decider, DecisionParams, EmbeddingWindow

    d = DecisionConfig(aggregate=aggregate)
    dec = Decider(DecisionParams(threshold=matcher.threshold, margin=d.margin, window=d.window,
                                 min_frames=d.min_frames, cooldown_s=d.cooldown_s))
    win = EmbeddingWindow(aggregate)
    agg = np.stack([win.push(e) for e in emb])
    events = []
    for i, matches in enumerate(matcher.search(agg, top_k=d.top_k)):
        ev = dec.update(matches, i / fps)
        if ev is not None:
            events.append((i, ev.item_id))
    return events


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
        diff = float(np.abs(encoder(torch.from_numpy(x8)).numpy() - ref_ort).max())
        out["max_abs_diff_vs_ort"] = diff
        if diff > 1e-3:
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
    ap.add_argument("--roi", default="200,100,240,240",
                    help="x,y,w,h cropped from every frame (default: the counter spot of the "
                    "640x480 kiosk clip, sample/kiosk.toml's ROI at this size), or 'none'")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from edge_runtime.encoders.select import open_encoder
    from edge_runtime.matcher import Matcher
    from models.bundle import read_manifest

    roi = None if args.roi == "none" else tuple(int(v) for v in args.roi.split(","))
    clip_csv = args.csv or args.clip.with_suffix(".csv")
    segs = load_segments(clip_csv, args.classes)
    m = read_manifest(args.bundle)
    encoder = open_encoder(args.bundle, m, "onnxruntime", threads=args.threads,
                           max_batch=max(8, args.max_batch))
    matcher = Matcher.open(args.bundle, encoder=encoder)
    known = {i for i, _ in matcher.items}
    missing = sorted({s[2] for s in segs} - known)

    print("throughput (as fast as possible)...", flush=True)
    fast = run_pipeline(matcher, args.clip, realtime=False, max_frames=None,
                        max_batch=args.max_batch, aggregate=3, roi=roi)
    print(f"  {fast['fps']} fps; paced at 30 fps...", flush=True)
    paced = run_pipeline(matcher, args.clip, realtime=True, max_frames=args.paced_frames,
                         max_batch=args.max_batch, aggregate=3, roi=roi)
    print(f"  p99 {paced['latency_ms_p99']} ms; encoder alone...", flush=True)
    speeds = encoder_speeds(args.bundle, m, args.run, args.threads)
    flops = onnx_flops(args.bundle / m.encoder.file)
    gemm = sgemm_gflops()
    print("  accuracy replay...", flush=True)
    emb = clip_embeddings(matcher, args.clip, roi)
    variants = {f"aggregate={k}": score_events(replay(matcher, emb, k), segs) for k in (1, 3, 5)}
    matcher.close()

    acc = score_events(fast["events"], segs)
    ort1 = speeds["ort"][args.threads][1]
    result = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "threads": args.threads},
        "bundle": {"path": str(args.bundle), "bundle_version": m.bundle_version,
                   "run_id": m.encoder.run_id, "input_px": m.input.size,
                   "embedding_size": m.embedding_size, "items": m.item_count,
                   "vectors": m.index.n_vectors, "threshold": matcher.threshold, "roi": roi,
                   "clip_items_not_in_bundle": missing},
        "throughput": {k: v for k, v in fast.items() if k != "events"},
        "paced_30fps": {k: v for k, v in paced.items() if k != "events"},
        "encoder_ms_per_image": speeds,
        "flops": {"encoder_gflop_per_frame": round(flops / 1e9, 3),
                  "encoder_gflops_ort_b1": round(flops / (ort1 / 1000) / 1e9, 1),
                  "sgemm_gflops": round(gemm, 1)},
        "accuracy_default": acc,
        "accuracy_by_aggregation": variants,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "runtime.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    t, p, s, f = r["throughput"], r["paced_30fps"], r["encoder_ms_per_image"], r["flops"]
    n = r["machine"]["threads"]

    def speed(table) -> str:
        if isinstance(table, str):
            return table
        return "; ".join(f"{k} thr: {v[1]} ms (b1), {v[8]} ms/img (b8)" for k, v in table.items())

    b = r["bundle"]
    lines = [
        "# Runtime benchmark (bench/runtime.py)", "",
        f"Machine: {r['machine']['cpu_count']} CPUs, {r['machine']['platform']}, {n} ONNX Runtime "
        f"threads in the pipeline. Bundle v{b['bundle_version']} (run {b['run_id']}, "
        f"{b['input_px']} px, {b['embedding_size']}-d, {b['items']} items, {b['vectors']} vectors, "
        f"threshold {b['threshold']}), ROI {b['roi']}.", "",
        "| measure | value | target |", "|---|---|---|",
        f"| throughput, as fast as possible | {t['fps']} frames/s ({t['frames']} frames) | >= 120 |",
        f"| frame-to-publish latency at 30 fps, p50 / p99 | {p['latency_ms_p50']} / "
        f"{p['latency_ms_p99']} ms ({p['frames']} frames, {p['dropped_frames']} skipped) | p99 < 30 ms |",
        f"| encoder, ONNX Runtime | {speed(s['ort'])} | |",
        f"| encoder, PyTorch eager | {speed(s['torch'])} | |",
        f"| encoder FLOPs per frame | {f['encoder_gflop_per_frame']} GFLOP | |",
        f"| encoder FLOP/s (ORT b1, {n} thr) vs sgemm | {f['encoder_gflops_ort_b1']} vs "
        f"{f['sgemm_gflops']} GFLOP/s | |",
    ]
    a = r["accuracy_default"]
    lines += [f"| event precision / recall | {a['precision']} / {a['recall']} "
              f"({a['events']} events, {a['found']}/{a['segments']} products) | 0.95 / 0.90 |", "",
              "Decision replayed on the same embeddings, by embedding aggregation:", "",
              "| variant | events | precision | recall |", "|---|---|---|---|"]
    for name, v in r["accuracy_by_aggregation"].items():
        lines.append(f"| {name} | {v['events']} | {v['precision']} | {v['recall']} |")
    if s.get("warning"):
        lines += ["", f"Warning: {s['warning']}"]
    if b["clip_items_not_in_bundle"]:
        lines += ["", f"Clip items missing from the bundle: {b['clip_items_not_in_bundle']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
