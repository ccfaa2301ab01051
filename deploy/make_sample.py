"""Rebuild the shipped sample (sample/catalogue, sample/queries, sample/clip.mp4, sample/clip.csv)
from the Grocery Store dataset and the kiosk clip in ../shared/data.

Why a script: the repository ships a few MB of derived data so `make demo` runs
in a fresh clone; this file is the exact recipe, so anyone with the source data
can check or regenerate it. It is deterministic: a fixed product list, fixed
photo picks, fixed JPEG quality, fixed cut points.

    python -m deploy.make_sample --data ../shared/data --out sample

The bundle (sample/bundle) is then trained, exported and indexed with the
trainer; deploy/make-sample.sh runs the whole recipe.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Ten products of the kiosk clip that look different from each other (fine
# class ids of the dataset's classes.csv).
PRODUCTS = (2, 7, 18, 25, 41, 45, 58, 61, 62, 70)
PHOTOS_PER_ITEM = 16
QUERIES_PER_ITEM = 3  # held-out val-split photos: sample/queries, for `trainer eval` and `match`
SHORT_SIDE = 192  # the encoder sees 64 px; 192 leaves room for its crop/scale distortions
JPEG_QUALITY = 85
CLIP_SIZE = (320, 240)
CLIP_FOURCC = "mp4v"
PAD_FRAMES = 30  # about 1 s of counter before and after each product (at most half the gap)
# A product shown again within this many frames (of the new clip) of its last showing is
# left out: the runtime's per-item cooldown (10 s by default) rightly gives no
# second event for it, which would read as a miss against the ground truth.
MIN_REPEAT_FRAMES = 600
# Photos of the empty counter, taken from the source clip outside the sample's
# cuts, as the reserved item `_background`: without it every frame, the empty
# counter too, lands near some product (cosine above 0.9), and no threshold
# tells them apart. Item ids starting with "_" are never products.
BACKGROUND_ITEM = "_background"
BACKGROUND_OFFSETS = (-8, 8)  # frames either side of the middle of each gap between products


@dataclass(frozen=True)
class Product:
    class_id: int
    name: str
    item_id: str  # the dataset's item path, e.g. Fruit/Apple/Pink-Lady
    iconic: Path


@dataclass(frozen=True)
class Segment:
    start: int  # first frame with the product fully in view (inclusive)
    end: int  # last such frame (inclusive)
    class_id: int


def read_products(data: Path) -> dict[int, Product]:
    """Fine class id -> Product, from grocery/classes.csv."""
    out: dict[int, Product] = {}
    with (data / "grocery" / "classes.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    for row in rows:
        name, cid, iconic = row[0].strip(), int(row[1]), row[4].strip().lstrip("/")
        item_id = str(Path(iconic).parent.relative_to("iconic-images-and-descriptions").as_posix())
        out[cid] = Product(cid, name, item_id, data / "grocery" / iconic)
    return out


def read_segments(data: Path) -> tuple[list[Segment], int]:
    """The clip's ground truth and its frame count."""
    with (data / "kiosk-clips" / "val-clip.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    segs = [Segment(int(r["start_frame"]), int(r["end_frame"]), int(r["class_id"])) for r in rows]
    cap = cv2.VideoCapture(str(data / "kiosk-clips" / "val-clip.mp4"))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return segs, n


def cut_ranges(segs: list[Segment], n_frames: int, keep: set[int]) -> list[tuple[int, int, Segment]]:
    """(first, last) source frames to copy around each kept segment: PAD_FRAMES
    either side, never past the middle of the gap to a neighbour, so the cut
    never shows the previous or next product; quick repeats are dropped."""
    out = []
    out_len = 0  # frames of the new clip so far: repeats are judged in its time
    last_end: dict[int, int] = {}  # class id -> end of its last showing, in new-clip frames
    for i, s in enumerate(segs):
        if s.class_id not in keep:
            continue
        prev_end = segs[i - 1].end if i > 0 else -2 * PAD_FRAMES
        next_start = segs[i + 1].start if i + 1 < len(segs) else n_frames + 2 * PAD_FRAMES
        first = max(0, s.start - PAD_FRAMES, (prev_end + s.start) // 2 + 1)
        last = min(n_frames - 1, s.end + PAD_FRAMES, (s.end + next_start) // 2 - 1)
        start_here = out_len + s.start - first
        if s.class_id in last_end and start_here - last_end[s.class_id] < MIN_REPEAT_FRAMES:
            continue
        last_end[s.class_id] = out_len + s.end - first
        out_len += last - first + 1
        out.append((first, last, s))
    return out


def resize_short(img: np.ndarray, short: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = short / min(h, w)
    if scale >= 1.0:
        return img
    return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def write_jpeg(src: Path, dst: Path) -> None:
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"make_sample: cannot read {src}")
    ok, buf = cv2.imencode(".jpg", resize_short(img, SHORT_SIDE),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise SystemExit(f"make_sample: cannot encode {dst}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.tobytes())


def make_catalogue(data: Path, products: list[Product], out: Path) -> int:
    """Evenly spaced train-split photos of each product plus its iconic image."""
    train = data / "grocery" / "train"
    n = 0
    for p in products:
        photos = sorted((train / p.item_id).glob("*.jpg"))
        if not photos:
            raise SystemExit(f"make_sample: no train photos in {train / p.item_id}")
        picks = np.linspace(0, len(photos) - 1, min(PHOTOS_PER_ITEM, len(photos))).round().astype(int)
        for i in sorted(set(picks.tolist())):
            write_jpeg(photos[i], out / p.item_id / photos[i].name)
            n += 1
        write_jpeg(p.iconic, out / p.item_id / p.iconic.name)
        n += 1
    return n


def make_queries(data: Path, products: list[Product], out: Path) -> int:
    """A few val-split photos per product (never used for training)."""
    val = data / "grocery" / "val"
    n = 0
    for p in products:
        photos = sorted((val / p.item_id).glob("*.jpg"))
        picks = np.linspace(0, len(photos) - 1, min(QUERIES_PER_ITEM, len(photos))).round().astype(int)
        for i in sorted(set(picks.tolist())):
            write_jpeg(photos[i], out / p.item_id / photos[i].name)
            n += 1
    return n


def background_frames(segs: list[Segment], ranges: list[tuple[int, int, Segment]]) -> list[int]:
    """Source frames of the empty counter (middles of the gaps between products)
    that the sample clip does not contain."""
    used = {f for a, b, _ in ranges for f in range(a, b + 1)}
    picks = []
    for before, after in zip(segs[:-1], segs[1:], strict=True):
        lo, hi = before.end + 8, after.start - 8  # clear of products sliding in or out
        if hi - lo < 10:
            continue
        mid = (lo + hi) // 2
        picks += [mid + d for d in BACKGROUND_OFFSETS if mid + d not in used]
    return picks


def make_background(data: Path, frames: list[int], out: Path) -> int:
    cap = cv2.VideoCapture(str(data / "kiosk-clips" / "val-clip.mp4"))
    want = set(frames)
    out.mkdir(parents=True, exist_ok=True)
    index = 0
    while want:
        ok, frame = cap.read()
        if not ok:
            break
        if index in want:
            ok, buf = cv2.imencode(".jpg", resize_short(frame, SHORT_SIDE),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            (out / f"counter_{index:05d}.jpg").write_bytes(buf.tobytes())
            want.discard(index)
        index += 1
    cap.release()
    return len(frames) - len(want)


def make_clip(data: Path, ranges: list[tuple[int, int, Segment]], products: dict[int, Product],
              clip: Path, truth: Path) -> int:
    """Copy the chosen frame ranges, in order, into a smaller clip and write its
    ground truth with the new frame numbers."""
    cap = cv2.VideoCapture(str(data / "kiosk-clips" / "val-clip.mp4"))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    tmp = clip.with_name(clip.stem + ".tmp" + clip.suffix)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*CLIP_FOURCC), fps, CLIP_SIZE)
    if not writer.isOpened():
        raise SystemExit(f"make_sample: OpenCV cannot write {CLIP_FOURCC} video here")
    rows: list[tuple[int, int, str, int]] = []
    wanted = {f: k for k, (a, b, _) in enumerate(ranges) for f in range(a, b + 1)}
    out_index = 0
    src_index = 0
    starts: dict[int, int] = {}
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        k = wanted.get(src_index)
        if k is not None:
            starts.setdefault(k, out_index)
            writer.write(cv2.resize(frame, CLIP_SIZE, interpolation=cv2.INTER_AREA))
            out_index += 1
        src_index += 1
    cap.release()
    writer.release()
    if len(starts) != len(ranges):
        raise SystemExit(f"make_sample: the source clip ended early ({src_index} frames)")
    for k, (a, _b, s) in enumerate(ranges):
        shift = starts[k] - a
        rows.append((s.start + shift, s.end + shift, products[s.class_id].item_id, s.class_id))
    check = cv2.VideoCapture(str(tmp))
    n_read = 0
    while check.read()[0]:
        n_read += 1
    check.release()
    if n_read != out_index:
        raise SystemExit(f"make_sample: wrote {out_index} frames but OpenCV reads back {n_read}")
    tmp.replace(clip)
    with truth.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["start_frame", "end_frame", "item_id", "class_id"])
        w.writerows(rows)
    return out_index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"),
                    help="folder holding grocery/ and kiosk-clips/")
    ap.add_argument("--out", type=Path, default=Path("sample"), help="the sample folder")
    args = ap.parse_args(argv)
    for need in ("grocery/classes.csv", "grocery/train", "grocery/val", "grocery/LICENSE",
                 "kiosk-clips/val-clip.mp4", "kiosk-clips/val-clip.csv"):
        if not (args.data / need).exists():
            print(f"make_sample: {args.data / need} is missing", file=sys.stderr)
            return 2
    products = read_products(args.data)
    chosen = [products[c] for c in PRODUCTS]
    segs, n_frames = read_segments(args.data)
    ranges = cut_ranges(segs, n_frames, set(PRODUCTS))

    args.out.mkdir(parents=True, exist_ok=True)
    cat = args.out / "catalogue"
    if cat.exists():
        shutil.rmtree(cat)
    n_photos = make_catalogue(args.data, chosen, cat)
    n_background = make_background(args.data, background_frames(segs, ranges), cat / BACKGROUND_ITEM)
    queries = args.out / "queries"
    if queries.exists():
        shutil.rmtree(queries)
    n_queries = make_queries(args.data, chosen, queries)
    shutil.copyfile(args.data / "grocery" / "LICENSE", args.out / "LICENSE")
    n_out = make_clip(args.data, ranges, products, args.out / "clip.mp4", args.out / "clip.csv")
    print(f"catalogue: {len(chosen)} items, {n_photos} images, {n_background} of the empty "
          f"counter ({BACKGROUND_ITEM}) -> {cat}")
    print(f"queries: {n_queries} val-split images -> {queries}")
    print(f"clip: {len(ranges)} products, {n_out} frames -> {args.out / 'clip.mp4'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
