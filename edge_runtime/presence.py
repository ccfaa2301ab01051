"""Is anything on the counter, and where: a model of the empty scene learnt on the device.

Why not similarity: an encoder trained on products maps the empty counter
near some product too (best cosine 0.83 on empty frames of the kiosk clip
against 0.85 on frames with a product), so no score threshold says "nothing
there". The scene itself does: a product is present while enough of the frame
differs from the learnt empty counter.

The model is a running reference frame at a small working resolution
(``work_width`` px wide; 160 px costs well under a millisecond a frame):

* **Light.** Every frame is compared with the reference times a per-channel
  gain, the median ratio frame / reference over the pixels that were
  background in the previous frame: auto-exposure, a cloud, a light switched
  on scale the whole scene and are not a product. A colour change that is not
  a gain (a new tablecloth) is a scene change, below.
* **Slow drift.** Background pixels blend into the reference at
  ``learn_rate`` per frame, so the reference follows slow changes of light.
* **Shadows.** A pixel darker than the reference by a similar ratio in every
  channel (``shadows``) is a shadow, not a product.
* **Scene change.** When more than ``scene_change`` of a band around the
  frame's border differs, the counter itself changed (a camera bump, the
  counter cleared or re-covered): nothing is present, and the reference is
  relearnt from the frame once it has been still for ``settle_frames``
  frames. The border, not the whole frame: a product held close to the camera
  covers half the frame (val-clip.mp4's do, up to 57%) but never the whole
  border, while a moved camera or a new counter changes all of it.
* **Left lying.** A change that stays for ``relearn_s`` seconds (a product
  left on the counter) becomes part of the reference. If it is then taken
  away, the frame matches the reference from before and that one comes back
  at once, so the hole it leaves is never "a product".

Presence is debounced: on after ``enter_frames`` frames in a row that differ
by at least ``min_area`` of the frame, off after ``leave_frames`` frames that
do not. The foreground's bounding box (connected components of at least
``min_blob`` of the frame, and at least a fifth of the largest) is what the
encoder will be shown (framing.py).

``update`` is pure apart from the model's own state: the caller passes the
frame's time ``t`` (file time or monotonic), nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PresenceParams", "SceneState", "SceneModel", "Box", "trim_arm"]

Box = tuple[int, int, int, int]   # x, y, w, h in the caller's image coordinates


@dataclass(frozen=True)
class PresenceParams:
    work_width: int = 160          # px: the model's working width (height keeps the aspect)
    pixel_threshold: float = 20.0  # colour difference (0..255, worst channel) that counts
    noise_k: float = 5.0           # ... or this many times the scene's measured noise, if more
    min_area: float = 0.01         # fraction of the frame that must differ: something is there
    min_blob: float = 0.002        # smaller connected pieces are noise
    scene_change: float = 0.6      # more of the border band differs: the scene changed, not a product
    enter_frames: int = 2
    leave_frames: int = 4
    learn_rate: float = 0.05       # background blend per frame where nothing is present
    relearn_s: float = 10.0        # a change that stays this long becomes background
    settle_frames: int = 3         # still frames before a changed scene is relearnt
    shadows: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.min_area < 1 or not 0 < self.scene_change <= 1:
            raise ValueError("need 0 < min_area < 1 and 0 < scene_change <= 1")
        if self.work_width < 32:
            raise ValueError("work_width must be at least 32")


@dataclass(frozen=True)
class SceneState:
    """What the scene model says about one frame."""

    present: bool          # debounced: something is on the counter
    differs: bool          # this frame alone differs by at least min_area
    area: float            # fraction of the frame that differs (after clean-up)
    box: Box | None        # foreground bounding box in image coordinates
    mask: np.ndarray       # foreground mask at the working resolution (uint8 0/255)
    scale: float           # image px per working px
    event: str = ""        # "", "learning", "scene_change", "relearnt", "absorbed", "restored"
    small: np.ndarray | None = None   # the frame at the working size, light-compensated (float32)


class SceneModel:
    """The empty counter, learnt and kept up to date frame by frame (see module docstring)."""

    WARMUP_FRAMES = 5

    def __init__(self, params: PresenceParams | None = None) -> None:
        self.p = params or PresenceParams()
        self.reset()

    def reset(self) -> None:
        """Forget the scene; the next frames relearn it."""
        self.bg: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._prev_fg: np.ndarray | None = None
        self._old_bg: np.ndarray | None = None   # the reference before the last absorption
        self._noise = 0.0
        self._seen = 0
        self._on = self._off = 0
        self.present = False
        self._changed_since: float | None = None
        self._still = 0
        self.relearns = 0

    # ------------------------------------------------------------------ per frame
    def update(self, image: np.ndarray, t: float) -> SceneState:
        import cv2

        small, scale = self._shrink(image)
        if self.bg is None or self.bg.shape != small.shape:
            self.reset()
            self.bg = small.copy()
        self._seen += 1
        if self._seen <= self.WARMUP_FRAMES:   # average the first frames; measure the noise
            self._learn_noise(small, self._prev)
            self._prev = small
            self.bg += (small - self.bg) / self._seen
            return self._state(False, 0.0, None, np.zeros(small.shape[:2], np.uint8), scale,
                               "learning")

        # The frame at the reference's exposure. While something is present the
        # reference keeps its exposure, so the pixels hidden behind the product
        # stay comparable; on an empty counter it is rebased on the frame's.
        gain = self._gain(small)
        norm = small / gain
        prev, self._prev = self._prev, norm
        diff = _channel_max(cv2.absdiff(norm, self.bg))
        thr = max(self.p.pixel_threshold, self.p.noise_k * self._noise)
        changed = diff > thr
        fg = changed & ~self._shadow(norm, self.bg) if self.p.shadows else changed
        mask = cv2.morphologyEx(fg.astype(np.uint8) * 255, cv2.MORPH_OPEN, _K3)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _K5)
        area = float(np.count_nonzero(mask)) / mask.size
        motion_img = None if prev is None else _channel_max(cv2.absdiff(norm, prev))

        # A scene change leaves differences all along the border, if only small
        # ones where the gain happens to fit (another counter): half the threshold.
        ring = _border(diff.shape)
        if float(np.count_nonzero(diff[ring] > thr / 2)) / ring.sum() > self.p.scene_change:
            return self._scene_change(small, motion_img, mask, area, scale, thr)
        self._still = 0
        if area >= self.p.min_area and self._old_bg is not None and self._is_old_scene(norm, mask, thr):
            self.bg, self._old_bg = self._old_bg, None
            self._reset_change()
            return self._state(False, 0.0, None, np.zeros_like(mask), scale, "restored")

        box_small, largest = _foreground_box(mask, self.p.min_blob)
        if box_small is not None:
            box_small = trim_arm(mask, box_small)
        differs = largest >= self.p.min_area
        self._debounce(differs)
        event = self._maybe_absorb(norm, differs, t)
        if event:
            return self._state(False, 0.0, None, np.zeros_like(mask), scale, event)
        if differs or self.present:
            self._blend(norm, mask, changed)
        else:   # nothing hidden: rebase the reference on the frame's exposure
            self.bg *= gain
            self._prev = small
            self._blend(small, mask, changed)
            self._learn_noise(small, prev * gain if prev is not None else None)
        box = None if box_small is None else _scale_box(box_small, scale, image.shape)
        return SceneState(present=self.present, differs=differs, area=area, box=box, mask=mask,
                          scale=scale, event="", small=norm)

    # ------------------------------------------------------------------ pieces
    def _shrink(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        import cv2

        h, w = image.shape[:2]
        ww = min(self.p.work_width, w)
        wh = max(1, round(h * ww / w))
        small = cv2.resize(image[:, :, :3] if image.ndim == 3 else image, (ww, wh),
                           interpolation=cv2.INTER_AREA)
        if small.ndim == 2:
            small = np.repeat(small[:, :, None], 3, axis=2)
        return small.astype(np.float32), w / ww

    def _gain(self, small: np.ndarray) -> np.ndarray:
        """Per-channel median of frame / reference over the band around the border
        (the counter, even when a product held close covers most of the frame),
        leaving out what was foreground in the previous frame."""
        sel = _border(small.shape).copy()
        if self._prev_fg is not None and self._prev_fg.shape == sel.shape:
            sel &= ~self._prev_fg
        if np.count_nonzero(sel) < 0.3 * np.count_nonzero(_border(small.shape)):
            sel = None if self._prev_fg is None else ~self._prev_fg
            if sel is not None and np.count_nonzero(sel) < 0.2 * sel.size:
                sel = None
        return _gain_to(small, self.bg, sel)

    @staticmethod
    def _shadow(norm: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Darker than the reference by about the same ratio (0.5-0.9) in every
        channel. Darker still is a dark object, never a shadow: a dark product
        on a light counter must stay foreground."""
        import cv2

        ratio = cv2.divide(norm + 4.0, ref + 4.0)
        lo, hi = _channel_min(ratio), _channel_max(ratio)
        return (lo > 0.5) & (hi < 0.9) & (hi - lo < 0.1)

    def _learn_noise(self, small: np.ndarray, prev: np.ndarray | None) -> None:
        if prev is None:
            return
        # median absolute frame difference of a still scene ~ 0.95 sigma for Gaussian noise
        d = np.abs(small[::2, ::2] - prev[::2, ::2]).ravel()
        level = float(np.partition(d, d.size // 2)[d.size // 2]) * 1.05
        self._noise = level if self._noise == 0 else 0.95 * self._noise + 0.05 * level

    def _debounce(self, differs: bool) -> None:
        if differs:
            self._on, self._off = self._on + 1, 0
            if self._on >= self.p.enter_frames:
                self.present = True
        else:
            self._off, self._on = self._off + 1, 0
            if self._off >= self.p.leave_frames:
                self.present = False

    def _blend(self, norm: np.ndarray, mask: np.ndarray, changed: np.ndarray) -> None:
        """Blend the pixels that match the reference (not foreground, not shadow)
        towards the frame; remember which pixels were foreground (for the next gain)."""
        import cv2

        fg = cv2.dilate(mask, _K5)
        self._prev_fg = fg > 0
        keep = cv2.bitwise_not(cv2.bitwise_or(fg, changed.astype(np.uint8) * 255))
        cv2.accumulateWeighted(norm, self.bg, self.p.learn_rate, mask=keep)

    def _scene_change(self, small: np.ndarray, motion_img: np.ndarray | None, mask: np.ndarray,
                      area: float, scale: float, thr: float) -> SceneState:
        """The counter changed: no product; relearn it from the frame as it is (its
        own exposure) once the frame is still."""
        self.present, self._on, self._off = False, 0, self.p.leave_frames
        self._reset_change()
        still = motion_img is not None and float(np.median(motion_img)) < thr / 2
        self._still = self._still + 1 if still else 0
        if self._still >= self.p.settle_frames:
            self.bg, self._old_bg, self._prev_fg = small.copy(), None, None
            self._prev = small
            self._still = 0
            self.relearns += 1
            return self._state(False, area, None, mask, scale, "relearnt")
        return self._state(False, area, None, mask, scale, "scene_change")

    def _reset_change(self) -> None:
        self._changed_since = None
        self.present, self._on = False, 0

    def _maybe_absorb(self, norm: np.ndarray, differs: bool, t: float) -> str:
        """A change that stays ``relearn_s`` becomes background; the reference from
        before is kept, to recognise the moment it is taken away."""
        if not differs:
            self._changed_since = None
            return ""
        if self._changed_since is None:
            self._changed_since = t
        if t - self._changed_since < self.p.relearn_s:
            return ""
        self._old_bg, self.bg, self._prev_fg = self.bg, norm.copy(), None
        self._reset_change()
        self.relearns += 1
        return "absorbed"

    def _is_old_scene(self, norm: np.ndarray, mask: np.ndarray, thr: float) -> bool:
        """The differing pixels look like the reference before the last absorption:
        what was left lying has been taken away."""
        old = self._old_bg
        if old is None or old.shape != norm.shape:
            return False
        gain = _gain_to(norm, old, mask == 0)
        d = _channel_max(np.abs(norm / gain - old))[mask > 0]
        return bool(np.mean(d <= thr) >= 0.8)

    @staticmethod
    def _state(present: bool, area: float, box: Box | None, mask: np.ndarray, scale: float,
               event: str) -> SceneState:
        return SceneState(present=present, differs=False, area=area, box=box, mask=mask,
                          scale=scale, event=event)


# ---------------------------------------------------------------------- helpers
_K3 = np.ones((3, 3), np.uint8)
_K5 = np.ones((5, 5), np.uint8)


_RINGS: dict[tuple[int, int], np.ndarray] = {}


def _border(shape: tuple[int, ...]) -> np.ndarray:
    """A band around the frame, 6% of its shorter side wide (cached per size)."""
    key = (int(shape[0]), int(shape[1]))
    ring = _RINGS.get(key)
    if ring is None:
        b = max(2, round(0.06 * min(key)))
        ring = np.ones(key, bool)
        ring[b:-b, b:-b] = False
        _RINGS[key] = ring
    return ring


def _gain_to(small: np.ndarray, ref: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
    """Per-channel median ratio over every other row and column (plenty for a median)."""
    a, b = small[::2, ::2], ref[::2, ::2]
    if sel is None:
        a, b = a.reshape(-1, 3), b.reshape(-1, 3)
    else:
        a, b = a[sel[::2, ::2]], b[sel[::2, ::2]]
    ratio = (a + 4.0) / (b + 4.0)
    med = [np.partition(ratio[:, c], len(ratio) // 2)[len(ratio) // 2] for c in range(3)]
    return np.clip(np.asarray(med, np.float32), 0.2, 5.0)


def _channel_max(img: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(img[:, :, 0], img[:, :, 1]), img[:, :, 2])


def _channel_min(img: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(img[:, :, 0], img[:, :, 1]), img[:, :, 2])


def _foreground_box(mask: np.ndarray, min_blob: float) -> tuple[Box | None, float]:
    """Union box of the significant connected components; the largest one's area
    fraction (scattered bits, such as the edges a camera bump leaves, are not a product)."""
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None, 0.0
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = (areas >= max(1.0, min_blob * mask.size)) & (areas >= 0.2 * areas.max())
    if not keep.any():
        return None, 0.0
    s = stats[1:][keep]
    x0, y0 = int(s[:, 0].min()), int(s[:, 1].min())
    x1 = int((s[:, 0] + s[:, 2]).max())
    y1 = int((s[:, 1] + s[:, 3]).max())
    return (x0, y0, x1 - x0, y1 - y0), float(areas.max()) / mask.size


def trim_arm(mask: np.ndarray, box: Box, keep: float = 0.5) -> Box:
    """The box without the arm that holds the product: where the foreground
    reaches a border of the view, its rows (or columns) narrower than ``keep``
    of the widest one at that end are cut off (an arm is narrower than what
    it holds). Without an arm, or a product as narrow as the arm, nothing changes."""
    x, y, w, h = box
    H, W = mask.shape[:2]
    sub = mask[y:y + h, x:x + w] > 0
    if y + h >= H or y <= 0:        # touches the bottom or top: trim rows
        width = sub.sum(axis=1)
        ok = np.flatnonzero(width >= keep * width.max())
        top = int(ok[0]) if y <= 0 else 0
        bottom = int(ok[-1]) + 1 if y + h >= H else h
        y, h = y + top, max(1, bottom - top)
        sub = sub[top:bottom]
    if x + w >= W or x <= 0:        # touches the right or left: trim columns
        height = sub.sum(axis=0)
        ok = np.flatnonzero(height >= keep * height.max())
        left = int(ok[0]) if x <= 0 else 0
        right = int(ok[-1]) + 1 if x + w >= W else w
        x, w = x + left, max(1, right - left)
    return x, y, w, h


def _scale_box(box: Box, scale: float, shape: tuple[int, ...]) -> Box:
    x, y, w, h = box
    H, W = shape[:2]
    x0, y0 = int(x * scale), int(y * scale)
    x1, y1 = min(W, int(round((x + w) * scale))), min(H, int(round((y + h) * scale)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)
