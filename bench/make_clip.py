"""A second kiosk clip, built from Grocery Store *train* photos only, with what
val-clip.mp4 does not have: so the runtime's defaults are measured on more than one clip.

    python bench/make_clip.py --out bench/clips/train-clip.mp4 [--seed 0] [--size 960x540]

val-clip.mp4 shows val photos sliding in from the side over a plain
gradient counter whose colour changes between products, with a little shake,
exposure and light drift. This clip has, per scene:

* counters: wood grain, tiles, speckled stone, a gingham cloth, a busy
  background (a blurred store photo), a dark counter with more sensor noise;
* positions and scales: off-centre, small (far) and large (close) products,
  tilted up to 20 degrees, a product that approaches the camera;
* motion: entries from every side including from below, a hand and arm
  holding the product, motion blur while moving, defocus blur for the first
  frames of a hold, larger shake, a product swapped for another without the
  counter emptying, a product lowered out of view and raised again, a product
  put down and left lying for 12 s, then taken away;
* light: slow brightness and colour-temperature drift, a moving patch of
  sunlight, cast shadows, lights switched to 70% on an empty counter, and a
  camera bump (the view shifts and turns a little) on an empty counter;
* an object that is not in any catalogue (a printed card), which must give no event.

The csv beside the clip: ``start_frame,end_frame,item_id,kind,image``, frames
counted from 0, inclusive, where the product is in view and held (a lowered
product's row spans both holds, one event expected; ``item_id`` is empty for
the unknown object, no event expected). Item ids are the train folders'
paths (``Fruit/Apple/Pink-Lady``), as a bundle indexed from the train split names them.
Deterministic for a seed. The photos are in the bundle's index (the train
split is what it is built from), so this clip tests presence, framing and
decisions more than the encoder; see bench/runtime.py.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "grocery" / "train"
FPS = 30
# The last frames of an eased move are within 1% of the pose they end in: the
# product is already fully in view and still there, so a showing starts then.
SETTLED = 2


@dataclass
class Pose:
    cx: float
    cy: float
    side: float    # px
    angle: float   # degrees


@dataclass
class Show:
    """One object's path through the frames: poses by frame (absolute), and how it is held."""

    photo: np.ndarray
    poses: dict[int, Pose]
    hand: bool = False
    shadow: bool = False
    defocus_from: int | None = None   # first frame of the hold: blurred for a few frames


@dataclass
class Scene:
    counter: np.ndarray            # float32 HxWx3, a little larger than the frame (for the bump)
    noise: float
    light: dict = field(default_factory=dict)


class Clip:
    """Renders frames and collects the ground truth."""

    def __init__(self, w: int, h: int, rng: np.random.Generator, writer) -> None:
        self.w, self.h, self.rng, self.writer = w, h, rng, writer
        self.n = 0
        self.truth: list[dict] = []
        self._noise = np.empty((h, w, 3), np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._yy, self._xx = yy, xx
        self.shows: list[Show] = []
        self.offset = np.array([0.0, 0.0, 0.0])   # camera: dx, dy, degrees
        self.gain = 1.0

    def render(self, scene: Scene, count: int) -> None:
        for _ in range(count):
            self.writer.write(self._frame(scene, self.n))
            self.n += 1
        self.shows = [s for s in self.shows if max(s.poses) >= self.n]

    def _frame(self, scene: Scene, i: int) -> np.ndarray:
        w, h = self.w, self.h
        dx, dy, deg = self.offset
        m = cv2.getRotationMatrix2D((w / 2 + 20, h / 2 + 20), deg, 1.0)
        m[:, 2] += (20 + dx, 20 + dy)
        m[:, 2] -= 20
        bg = cv2.warpAffine(scene.counter, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        img = bg.copy()
        for s in self.shows:
            pose = s.poses.get(i)
            if pose is None:
                continue
            prev = s.poses.get(i - 1, pose)
            speed = np.hypot(pose.cx - prev.cx, pose.cy - prev.cy) + abs(pose.side - prev.side)
            if s.shadow:
                img = _shadow(img, pose, w, h)
            if s.hand:
                _arm(img, pose, h)
            blur = 0.0
            if s.defocus_from is not None and 0 <= i - s.defocus_from < 6:
                blur = 3.0 * (1 - (i - s.defocus_from) / 6)
            img = _paste(img, s.photo, pose, speed, (pose.cx - prev.cx, pose.cy - prev.cy), blur)
            if s.hand:
                _fingers(img, pose)
        img *= self._light(scene, i)
        cv2.randn(self._noise, 0.0, scene.noise)
        img += self._noise
        return np.clip(img, 0, 255).astype(np.uint8)

    def _light(self, scene: Scene, i: int) -> np.ndarray:
        t = i / FPS
        L = scene.light
        g = self.gain * (1 + L.get("drift", 0.0) * np.sin(2 * np.pi * t / L.get("period", 9.0)))
        warm = L.get("warm", 0.0) * np.sin(2 * np.pi * t / 13.0)
        gains = np.array([g * (1 - warm), g, g * (1 + warm)], np.float32)   # BGR
        if not L.get("sun"):
            return gains
        yy, xx = self._yy, self._xx
        cx = self.w * (0.3 + 0.4 * (0.5 + 0.5 * np.sin(t / 40.0)))   # drifts, slowly
        patch = 1 + 0.3 * np.exp(-(((xx - cx) / (0.25 * self.w)) ** 2 + ((yy - 0.3 * self.h) / (0.3 * self.h)) ** 2))
        return patch[:, :, None] * gains


# ---------------------------------------------------------------------- drawing
def _paste(img, photo, pose: Pose, speed: float, vel, blur: float) -> np.ndarray:
    ph, pw = photo.shape[:2]
    s = pose.side / max(ph, pw)
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), pose.angle, s)
    m[:, 2] += (pose.cx - pw / 2, pose.cy - ph / 2)
    size = (img.shape[1], img.shape[0])
    sprite = cv2.warpAffine(photo, m, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(np.ones((ph, pw), np.float32), m, size, flags=cv2.INTER_LINEAR)
    if speed > 1.5:   # motion blur along the direction of travel
        k = int(min(31, speed)) | 1
        kern = np.zeros((k, k), np.float32)
        ang = np.degrees(np.arctan2(vel[1], vel[0])) if np.hypot(*vel) > 0.5 else 90.0
        cv2.line(kern, (0, k // 2), (k - 1, k // 2), 1.0, 1)
        kern = cv2.warpAffine(kern, cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), ang, 1.0), (k, k))
        kern /= max(kern.sum(), 1e-6)
        sprite, alpha = cv2.filter2D(sprite, -1, kern), cv2.filter2D(alpha, -1, kern)
    if blur > 0.3:
        sprite = cv2.GaussianBlur(sprite, (0, 0), blur)
    a = alpha[:, :, None]
    return img * (1 - a) + sprite * a


def _shadow(img, pose: Pose, w: int, h: int) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    c = (int(pose.cx + 0.12 * pose.side), int(pose.cy + 0.15 * pose.side))
    cv2.ellipse(mask, c, (int(0.5 * pose.side), int(0.45 * pose.side)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.08 * pose.side + 1)
    return img * (1 - 0.35 * mask[:, :, None])


SKIN = (120, 150, 205)   # BGR


def _arm(img, pose: Pose, h: int) -> None:
    half = int(0.16 * pose.side)
    x, y = int(pose.cx + 0.1 * pose.side), int(pose.cy + 0.3 * pose.side)
    pts = np.array([[x - half, y], [x + half, y], [x + half + 40, h + 5], [x - half + 20, h + 5]], np.int32)
    cv2.fillPoly(img, [pts], SKIN)


def _fingers(img, pose: Pose) -> None:
    y = int(pose.cy + 0.42 * pose.side)
    for k in range(3):
        x = int(pose.cx - 0.05 * pose.side + k * 0.1 * pose.side)
        cv2.ellipse(img, (x, y), (int(0.045 * pose.side) + 1, int(0.09 * pose.side) + 1), 0, 0, 360,
                    SKIN, -1)


# ---------------------------------------------------------------------- counters
def counter(kind: str, w: int, h: int, rng: np.random.Generator, busy: np.ndarray) -> np.ndarray:
    W, H = w + 40, h + 40
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 6)
    if kind == "wood":
        grain = np.sin(xx / 9.0 + 6 * noise + 0.002 * yy * yy / H * 40)
        base = np.array([60, 110, 160], np.float32)
        return base * (1 + 0.15 * grain[:, :, None])
    if kind == "tiles":
        t = 90
        grout = ((xx % t) < 4) | ((yy % t) < 4)
        shade = 1 + 0.06 * rng.normal(0, 1, ((H // t) + 1, (W // t) + 1))
        tile = shade[(yy // t).astype(int), (xx // t).astype(int)]
        img = np.array([200, 205, 210], np.float32) * tile[:, :, None]
        img[grout] = (110, 115, 120)
        return img
    if kind == "stone":
        speck = rng.random((H, W)) < 0.06
        img = np.array([128, 128, 125], np.float32) * (1 + 0.2 * noise[:, :, None])
        img[speck] *= 0.5
        return cv2.GaussianBlur(img, (0, 0), 0.8)
    if kind == "cloth":
        check = (((xx // 36) + (yy // 36)) % 2).astype(np.float32)
        img = np.where(check[:, :, None] > 0, np.array([70, 70, 200], np.float32),
                       np.array([235, 235, 240], np.float32))
        return cv2.GaussianBlur(img, (0, 0), 1.5)
    if kind == "busy":
        img = cv2.resize(busy, (W, H)).astype(np.float32)
        return cv2.GaussianBlur(img, (0, 0), 5) * 0.8
    if kind == "dark":
        return np.array([28, 30, 32], np.float32) * (1 + 0.3 * noise[:, :, None])
    raise ValueError(kind)


def unknown_card(rng: np.random.Generator) -> np.ndarray:
    """A printed card with shapes and stripes: not a grocery product."""
    card = np.full((300, 300, 3), (240, 240, 235), np.uint8)
    for k in range(6):
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(card, (int(rng.integers(40, 260)), int(rng.integers(40, 260))),
                   int(rng.integers(15, 60)), colour, -1)
        cv2.rectangle(card, (0, 30 * k), (300, 30 * k + 8), colour, -1)
    cv2.putText(card, "SALE", (60, 170), cv2.FONT_HERSHEY_DUPLEX, 2.2, (20, 20, 20), 4)
    return card


# ---------------------------------------------------------------------- choreography
class Director:
    """Builds the clip scene by scene: poses for each show, then renders."""

    def __init__(self, clip: Clip, rng: np.random.Generator) -> None:
        self.c, self.rng = clip, rng

    def empty(self, scene: Scene, frames: int) -> None:
        self.c.render(scene, frames)

    def _target(self, small: bool = False, large: bool = False) -> Pose:
        w, h, r = self.c.w, self.c.h, self.rng
        side = h * (r.uniform(0.28, 0.36) if small else r.uniform(0.62, 0.72) if large
                    else r.uniform(0.4, 0.58))
        cx = w / 2 + r.uniform(-0.28, 0.28) * w
        cy = h / 2 + r.uniform(-0.18, 0.18) * h
        cx = float(np.clip(cx, side * 0.6, w - side * 0.6))
        cy = float(np.clip(cy, side * 0.6, h - side * 0.6))
        return Pose(cx, cy, side, float(r.uniform(-20, 20)))

    def _outside(self, p: Pose, side: str) -> Pose:
        w, h = self.c.w, self.c.h
        d = p.side * 0.8
        x, y = {"left": (-d, p.cy), "right": (w + d, p.cy), "top": (p.cx, -d),
                "bottom": (p.cx, h + d)}[side]
        return Pose(x, y, p.side, p.angle)

    def _move(self, poses: dict, start: int, a: Pose, b: Pose, n: int) -> int:
        for k in range(n):
            u = (k + 1) / n
            u = 1 - (1 - u) ** 2   # ease out
            poses[start + k] = Pose(a.cx + (b.cx - a.cx) * u, a.cy + (b.cy - a.cy) * u,
                                    a.side + (b.side - a.side) * u, a.angle + (b.angle - a.angle) * u)
        return start + n

    def _hold(self, poses: dict, start: int, p: Pose, n: int, shake: float) -> int:
        r = self.rng
        x = y = s = a = 0.0
        for k in range(n):
            x, y = 0.8 * x + r.normal(0, shake), 0.8 * y + r.normal(0, shake)
            s, a = 0.9 * s + r.normal(0, 0.006), 0.9 * a + r.normal(0, 0.4 * (shake > 0))
            poses[start + k] = Pose(p.cx + x, p.cy + y, p.side * (1 + s), p.angle + a)
        return start + n

    def _side(self) -> str:
        return str(self.rng.choice(["left", "right", "top", "bottom"]))

    def _show(self, photo: np.ndarray, **kw) -> Show:
        s = Show(photo, {}, **kw)
        self.c.shows.append(s)
        return s

    def held(self, scene: Scene, photo, item: str, image: str, *, small=False, large=False,
             hand=None, shadow=None, defocus=None, kind="held", approach=False) -> None:
        r, c = self.rng, self.c
        hand = bool(r.random() < 0.5) if hand is None else hand
        shadow = bool(r.random() < 0.4) if shadow is None else shadow
        defocus = bool(r.random() < 0.3) if defocus is None else defocus
        s = self._show(photo, hand=hand, shadow=shadow)
        p = self._target(small, large)
        t = c.n
        if approach:   # comes towards the camera from far away
            far = Pose(p.cx, p.cy, p.side * 0.3, p.angle)
            t = self._move(s.poses, t, self._outside(far, "bottom"), far, 8)
            t = self._move(s.poses, t, far, p, 22)
        else:
            t = self._move(s.poses, t, self._outside(p, self._side()), p, int(r.integers(9, 15)))
        if defocus:
            s.defocus_from = t
        start = t - SETTLED
        t = self._hold(s.poses, t, p, int(r.integers(60, 100)), float(r.uniform(0.5, 3.0)))
        c.truth.append({"start_frame": start, "end_frame": t - 1, "item_id": item, "kind": kind,
                        "image": image})
        t = self._move(s.poses, t, s.poses[t - 1], self._outside(p, self._side()), int(r.integers(9, 15)))
        c.render(scene, t - c.n)

    def swap(self, scene: Scene, a, b) -> None:
        """A is held, then taken away while B comes in: the counter never empties."""
        (pa, ia, fa), (pb, ib, fb) = a, b
        r, c = self.rng, self.c
        sa, sb = self._show(pa, hand=True), self._show(pb, hand=False)
        p, q = self._target(), self._target()
        t = self._move(sa.poses, c.n, self._outside(p, "left"), p, 12)
        end_a = self._hold(sa.poses, t, p, int(r.integers(60, 90)), 1.5)
        c.truth.append({"start_frame": t - SETTLED, "end_frame": end_a - 1, "item_id": ia, "kind": "swap",
                        "image": fa})
        self._move(sa.poses, end_a, sa.poses[end_a - 1], self._outside(p, "right"), 14)
        t = self._move(sb.poses, end_a + 4, self._outside(q, "bottom"), q, 14)
        end_b = self._hold(sb.poses, t, q, int(r.integers(60, 90)), 1.5)
        c.truth.append({"start_frame": t - SETTLED, "end_frame": end_b - 1, "item_id": ib, "kind": "swap",
                        "image": fb})
        t = self._move(sb.poses, end_b, sb.poses[end_b - 1], self._outside(q, "top"), 12)
        c.render(scene, t - c.n)

    def lowered(self, scene: Scene, photo, item: str, image: str, *, fully: bool) -> None:
        """Held, lowered (out of view, or half out), raised again: one event."""
        c = self.c
        s = self._show(photo, hand=True)
        p = self._target()
        start = self._move(s.poses, c.n, self._outside(p, "right"), p, 12)
        t = self._hold(s.poses, start, p, 45, 1.5)
        low = Pose(p.cx, c.h + p.side * 0.7 if fully else c.h - 0.05 * p.side, p.side, p.angle)
        t = self._move(s.poses, t, s.poses[t - 1], low, 8)
        t = self._hold(s.poses, t, low, 8 if fully else 15, 1.0)
        t = self._move(s.poses, t, low, p, 8)
        t = self._hold(s.poses, t, p, 45, 1.5)
        c.truth.append({"start_frame": start - SETTLED, "end_frame": t - 1, "item_id": item,
                        "kind": "lowered" if fully else "half-lowered", "image": image})
        t = self._move(s.poses, t, s.poses[t - 1], self._outside(p, "left"), 12)
        c.render(scene, t - c.n)

    def left_lying(self, scene: Scene, photo, item: str, image: str, seconds: float = 12.0) -> None:
        """Put down on the counter, perfectly still, then taken away."""
        c = self.c
        s = self._show(photo, shadow=True)
        p = self._target()
        p.angle = 0.0
        start = self._move(s.poses, c.n, self._outside(p, "bottom"), p, 12)
        t = self._hold(s.poses, start, p, int(seconds * FPS), 0.0)
        c.truth.append({"start_frame": start - SETTLED, "end_frame": t - 1, "item_id": item, "kind": "left",
                        "image": image})
        t = self._move(s.poses, t, p, self._outside(p, "bottom"), 12)
        c.render(scene, t - c.n)

    def gap(self, scene: Scene) -> None:
        self.empty(scene, int(self.rng.integers(30, 60)))


def pick_photos(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, str, str]]:
    """n distinct products, one random train photo each: (image, item_id, path)."""
    items = sorted({p.parent.relative_to(DATA).as_posix() for p in DATA.rglob("*.jpg")})
    if len(items) < n:
        raise SystemExit(f"make_clip: need {n} products under {DATA}, found {len(items)}")
    out = []
    for item in rng.permutation(items)[:n]:
        photos = sorted((DATA / item).glob("*.jpg"))
        f = photos[int(rng.integers(len(photos)))]
        out.append((cv2.imread(str(f)), str(item), f"train/{item}/{f.name}"))
    return out


def build(seed: int, w: int, h: int, writer) -> Clip:
    rng = np.random.default_rng(seed)
    cv2.setRNGSeed(seed)
    photos = pick_photos(rng, 34)
    busy = photos.pop()[0]
    c = Clip(w, h, rng, writer)
    d = Director(c, rng)
    nxt = iter(photos)

    def scene(kind: str, noise: float = 2.5, **light) -> Scene:
        c.offset[:] = 0
        c.gain = 1.0
        return Scene(counter(kind, w, h, rng, busy), noise, light)

    s = scene("wood", drift=0.12, warm=0.08)
    d.empty(s, 45)
    d.held(s, *next(nxt), hand=True)
    d.gap(s)
    d.held(s, *next(nxt), small=True)
    d.gap(s)
    d.held(s, *next(nxt), defocus=True)
    d.gap(s)
    d.swap(s, next(nxt), next(nxt))
    d.gap(s)
    d.held(s, *next(nxt), shadow=True)
    d.gap(s)

    s = scene("tiles", sun=True)
    d.empty(s, 40)
    d.held(s, *next(nxt))
    d.gap(s)
    d.lowered(s, *next(nxt), fully=True)
    d.gap(s)
    d.held(s, *next(nxt), approach=True)
    d.empty(s, 20)
    c.offset[:] = (14, -9, 1.2)   # the camera is bumped on the empty counter
    d.empty(s, 40)
    d.held(s, *next(nxt), large=True)
    d.gap(s)
    d.held(s, *next(nxt))
    d.gap(s)

    s = scene("stone", drift=0.08)
    d.empty(s, 40)
    d.held(s, *next(nxt), shadow=True)
    d.gap(s)
    d.held(s, unknown_card(rng), "", "synthetic card", hand=True, kind="unknown")
    d.gap(s)
    c.gain = 0.7                  # lights switched to 70% on the empty counter
    d.empty(s, 40)
    d.held(s, *next(nxt), shadow=True)
    d.gap(s)
    d.lowered(s, *next(nxt), fully=False)
    d.gap(s)

    s = scene("cloth", warm=0.1)
    d.empty(s, 40)
    for _ in range(3):
        d.held(s, *next(nxt))
        d.gap(s)
    d.swap(s, next(nxt), next(nxt))
    d.gap(s)

    s = scene("busy", drift=0.1)
    d.empty(s, 40)
    for _ in range(3):
        d.held(s, *next(nxt), hand=True)
        d.gap(s)
    d.left_lying(s, *next(nxt))
    d.empty(s, 60)

    s = scene("dark", noise=6.0, drift=0.1)
    d.empty(s, 40)
    for k in range(4):
        d.held(s, *next(nxt), small=k % 2 == 0)
        d.gap(s)
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "clips" / "train-clip.mp4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="960x540", help="WxH")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"make_clip: {DATA} not found (the Grocery Store train split)", file=sys.stderr)
        return 2
    w, h = (int(v) for v in args.size.lower().split("x"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
    try:
        clip = build(args.seed, w, h, writer)
    finally:
        writer.release()
    tmp.replace(args.out)
    with args.out.with_suffix(".csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["start_frame", "end_frame", "item_id", "kind", "image"])
        wr.writeheader()
        wr.writerows(clip.truth)
    print(f"{args.out}: {clip.n} frames ({clip.n / FPS:.0f} s), {len(clip.truth)} presentations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
