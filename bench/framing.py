"""What is lost to framing, and what to the encoder: accuracy by what the encoder is shown.

    python bench/framing.py --bundle BUNDLE [--clip CLIP] [--every 2]

For every frame in which a product is held (the clip's csv), the encoder is
shown, side by side:

* ``full``: the whole frame (the runtime without a region, before issue 14);
* ``fixed``: a centre square of half the frame's shorter side (the hand-set
  region of interest of the kiosk clip: 240x240 of 640x480);
* ``box mM``: the foreground box of the scene model (edge_runtime/presence.py)
  squared with margin M (negative: an inset);
* ``multi``: embeddings of several box crops averaged.

Reported per framing: the fraction of frames whose top-1 item is right, and
per presentation the top-1 of the mean embedding over its frames (what a
decision over the whole presentation can reach). The scene model runs over
every frame, as the runtime does. Results: bench/results/framing-CLIPNAME.md/.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO.parent / "shared" / "data"

import numpy as np  # noqa: E402
from scoring import load_segments  # noqa: E402

FRAMINGS: dict[str, tuple[str, tuple[float, ...]]] = {
    "full": ("full", ()),
    "fixed": ("fixed", ()),
    "box m0.1": ("box", (0.1,)),
    "box m0": ("box", (0.0,)),
    "box m-0.1": ("box", (-0.1,)),
    "box m-0.15": ("box", (-0.15,)),
    "box m-0.2": ("box", (-0.2,)),
    "box m-0.25": ("box", (-0.25,)),
    "multi -0.1,-0.2": ("box", (-0.1, -0.2)),
    "multi 0,-0.15,-0.3": ("box", (0.0, -0.15, -0.3)),
    "multi 0.1,-0.1,-0.25": ("box", (0.1, -0.1, -0.25)),
}


def views(img: np.ndarray, box, kind: str, margins) -> list[np.ndarray]:
    from edge_runtime.framing import crop_views

    if kind == "full":
        return [img]
    if kind == "fixed":
        h, w = img.shape[:2]
        s = min(h, w) // 2
        return [img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]]
    return crop_views(img, box, margins)


def measure(matcher, clip: Path, segs, every: int) -> dict:
    import cv2

    from edge_runtime.presence import SceneModel

    seg_of = {}
    for k, (a, b, item) in enumerate(segs):
        if item is not None:
            seg_of.update({i: k for i in range(a, b + 1)})
    scene = SceneModel()
    cap = cv2.VideoCapture(str(clip))
    per: dict[str, dict] = {n: {"right": 0, "frames": 0, "sum": {}} for n in FRAMINGS}
    no_box = 0
    i = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        state = scene.update(img, i / 30.0)
        k = seg_of.get(i)
        if k is not None and i % every == 0:
            if state.box is None:
                no_box += 1
            for name, (kind, margins) in FRAMINGS.items():
                if kind == "box" and state.box is None:
                    emb = None
                else:
                    e = matcher.encode(views(img, state.box, kind, margins)).mean(axis=0)
                    emb = e / max(float(np.linalg.norm(e)), 1e-12)
                r = per[name]
                r["frames"] += 1
                if emb is None:
                    continue
                top = matcher.search(emb[None], top_k=1)[0][0]
                r["right"] += top.item_id == segs[k][2]
                r["sum"][k] = r["sum"].get(k, 0) + emb
        i += 1
    cap.release()
    out = {}
    for name, r in per.items():
        pres_right = 0
        for k, s in r["sum"].items():
            v = s / max(float(np.linalg.norm(s)), 1e-12)
            pres_right += matcher.search(v[None], top_k=1)[0][0].item_id == segs[k][2]
        n_pres = sum(1 for s in segs if s[2] is not None)
        out[name] = {"frame_top1": round(r["right"] / max(r["frames"], 1), 3),
                     "presentation_top1": round(pres_right / n_pres, 3),
                     "frames": r["frames"], "presentations": n_pres}
    return {"framings": out, "frames_without_box": no_box}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--clip", type=Path, default=DATA / "kiosk-clips" / "val-clip.mp4")
    ap.add_argument("--csv", type=Path, help="ground truth (default: the clip's .csv)")
    ap.add_argument("--classes", type=Path, default=DATA / "grocery" / "classes.csv")
    ap.add_argument("--every", type=int, default=2, help="use every Nth held frame")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from edge_runtime.encoders.select import open_encoder
    from edge_runtime.matcher import Matcher
    from models.bundle import read_manifest

    segs = load_segments(args.csv or args.clip.with_suffix(".csv"), args.classes)
    m = read_manifest(args.bundle)
    matcher = Matcher.open(args.bundle, encoder=open_encoder(args.bundle, m, "onnxruntime",
                                                             threads=args.threads, max_batch=8))
    t0 = time.perf_counter()
    res = measure(matcher, args.clip, segs, args.every)
    matcher.close()
    res.update({"clip": str(args.clip), "bundle": str(args.bundle), "run_id": m.encoder.run_id,
                "input_px": m.input.size, "every": args.every,
                "seconds": round(time.perf_counter() - t0, 1)})
    name = f"framing-{args.clip.stem}-{m.encoder.run_id}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# Framing: {args.clip.name}, encoder {m.encoder.run_id} ({m.input.size} px)", "",
             "| what the encoder sees | top-1 per frame | top-1 per presentation (mean embedding) |",
             "|---|---|---|"]
    for fname, v in res["framings"].items():
        lines.append(f"| {fname} | {v['frame_top1']} | {v['presentation_top1']} |")
    lines += ["", f"{res['framings']['full']['frames']} held frames (every {args.every}), "
              f"{res['framings']['full']['presentations']} presentations; "
              f"{res['frames_without_box']} held frames without a foreground box."]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
