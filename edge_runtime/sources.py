"""Frame sources: cameras, streams, files and image folders behind one small interface.

A capture thread reads from OpenCV and hands frames to the pipeline:

* live sources (V4L2, GStreamer, RTSP/HTTP) and ``--realtime`` files keep only
  the newest frame, so a slow consumer never sees stale frames from driver
  buffers (frames overwritten before they were taken are counted as dropped);
* files and folders played as fast as possible deliver every frame, in order,
  through a small blocking queue (decode overlaps encode, nothing is dropped).

Every frame is stamped: ``index`` (position in the file, or a running count
for live sources), ``source_ts`` (seconds into the file, or capture wall time),
``captured`` (monotonic capture time: latency is measured from here) and ``t``
(the decision clock: file time for files, so cooldowns mean the same thing at
any playback speed). Reads that fail several times in a row reopen the source
with exponential backoff; ``state`` says where it stands for the status topic.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.errors import ConfigError

__all__ = ["Frame", "FrameSource", "Capture", "CaptureSource", "ImageFolderCapture",
           "SourceSpec", "describe_source", "redact_uri", "open_source", "crop_roi"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
STATES = ("opening", "streaming", "reconnecting", "ended", "failed", "stopped")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    index: int
    source_ts: float
    captured: float
    t: float


class FrameSource(Protocol):
    """What the pipeline needs from a source (inject a fake or a real one)."""

    state: str
    dropped: int
    live: bool

    def start(self) -> None: ...
    def read(self, timeout: float) -> Frame | None:
        """The next frame, or None when none came within ``timeout`` (check ``ended``)."""
    @property
    def ended(self) -> bool: ...
    def stop(self) -> None: ...


class Capture(Protocol):
    """The part of cv2.VideoCapture used here (ImageFolderCapture implements it too)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name
    def read(self) -> tuple[bool, Any]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


class ImageFolderCapture:
    """A folder of images, sorted by name, read like a video (unreadable files skipped)."""

    def __init__(self, folder: Path, fps: float) -> None:
        self.files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.fps = fps
        self.pos = 0

    def isOpened(self) -> bool:  # noqa: N802
        return bool(self.files)

    def read(self) -> tuple[bool, Any]:
        import cv2

        while self.pos < len(self.files):
            path = self.files[self.pos]
            self.pos += 1
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is not None:
                return True, img
            log.warning("skipping unreadable image %s", path)
        return False, None

    def get(self, prop: int) -> float:
        import cv2

        return float(self.fps) if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.files = []


@dataclass(frozen=True)
class SourceSpec:
    """What a source URI means: kind in v4l2/gstreamer/url/file/folder."""

    kind: str
    target: str | int
    live: bool


def describe_source(uri: str) -> SourceSpec:
    """Classify a source URI; a missing file or folder is a ConfigError naming it."""
    u = uri.strip()
    if u.isdigit():
        return SourceSpec("v4l2", int(u), True)
    if u.startswith("/dev/video"):
        return SourceSpec("v4l2", u, True)
    if "!" in u:
        return SourceSpec("gstreamer", u, True)
    if "://" in u:
        scheme = u.split("://", 1)[0].lower()
        if scheme in ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp"):
            return SourceSpec("url", u, True)
        if scheme == "file":
            u = u[len("file://"):]
        else:
            raise ConfigError(f"source.uri: unsupported scheme {scheme!r} in {uri!r}")
    p = Path(u).expanduser()
    if p.is_dir():
        return SourceSpec("folder", str(p), False)
    if p.is_file():
        return SourceSpec("file", str(p), False)
    raise ConfigError(f"source.uri: {uri!r} is not a camera, a URL, a file or a folder")


def redact_uri(uri: str) -> str:
    """A URI safe to log and publish: rtsp://user:pass@host/... -> rtsp://***@host/..."""
    if "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def make_opener(spec: SourceSpec, cfg: Any) -> Callable[[], Capture]:
    """A function that opens the source once (called again to reconnect)."""
    import cv2

    def open_v4l2() -> Capture:
        cap = cv2.VideoCapture(spec.target, cv2.CAP_V4L2)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, cfg.width),
                            (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height), (cv2.CAP_PROP_FPS, cfg.fps)):
            if value:
                cap.set(prop, float(value))
        return cap

    def open_url() -> Capture:
        # Timeouts must be passed at open time: RTSP opens and reads can hang otherwise.
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000)]
        return cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)

    openers = {
        "v4l2": open_v4l2,
        "gstreamer": lambda: cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER),
        "url": open_url,
        "file": lambda: cv2.VideoCapture(spec.target),
        "folder": lambda: ImageFolderCapture(Path(spec.target), cfg.folder_fps),
    }
    return openers[spec.kind]


def crop_roi(img: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Crop (x, y, w, h), clipped to the frame; None = the whole frame."""
    if roi is None:
        return img
    x, y, w, h = roi
    H, W = img.shape[:2]
    x0, y0 = min(max(x, 0), W - 1), min(max(y, 0), H - 1)
    return img[y0:min(y0 + h, H), x0:min(x0 + w, W)]


class CaptureSource:
    """A capture thread over an opener (see module docstring for the semantics).

    ``opener`` returns a fresh Capture each call; ``live`` = camera/stream;
    ``realtime`` paces a file at its fps; ``loop`` restarts a file at its end.
    ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(self, opener: Callable[[], Capture], *, live: bool, realtime: bool = False,
                 loop: bool = False, name: str = "source", max_read_failures: int = 5,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 max_reconnects: int | None = None, queue_size: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._opener = opener
        self.live = live
        self.keep_newest = live or realtime
        self.realtime = realtime and not live
        self.loop = loop and not live
        self.name = name
        self.max_read_failures = max_read_failures
        self.backoff = (reconnect_min_s, max(reconnect_min_s, reconnect_max_s))
        self.max_reconnects = max_reconnects
        self.clock = clock
        self.state = "opening"
        self.dropped = 0
        self.frames = 0
        self.reconnects = 0
        self.fps = 0.0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=queue_size)
        self._latest: Frame | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"capture-{name}", daemon=True)

    # -- consumer side
    def start(self) -> None:
        self._thread.start()

    @property
    def ended(self) -> bool:
        """True once the source is exhausted/failed and every frame has been read."""
        if not self._done.is_set():
            return False
        if self.keep_newest:
            with self._cond:
                return self._latest is None
        return self._queue.empty()

    def read(self, timeout: float) -> Frame | None:
        if self.keep_newest:
            with self._cond:
                if self._latest is None:
                    self._cond.wait_for(lambda: self._latest is not None or self._done.is_set(), timeout)
                frame, self._latest = self._latest, None
                return frame
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.state not in ("ended", "failed"):
            self.state = "stopped"

    # -- producer side
    def _deliver(self, frame: Frame) -> None:
        self.frames += 1
        if self.keep_newest:
            with self._cond:
                if self._latest is not None:
                    self.dropped += 1
                self._latest = frame
                self._cond.notify_all()
            return
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.2)
                return
            except queue.Full:
                continue

    def _open(self) -> Capture | None:
        """Open with exponential backoff; None when stopped or out of attempts."""
        delay = self.backoff[0]
        attempt = 0
        while not self._stop.is_set():
            cap = None
            try:
                cap = self._opener()
                if cap.isOpened():
                    return cap
            except Exception as exc:  # OpenCV/driver errors: log and retry
                log.warning("opening %s failed: %s", self.name, exc)
            if cap is not None:
                cap.release()
            attempt += 1
            if not self.live or (self.max_reconnects is not None and attempt > self.max_reconnects):
                return None
            log.warning("cannot open %s; retrying in %.1f s", self.name, delay)
            self.state = "reconnecting"
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])
        return None

    def _run(self) -> None:
        try:
            self._capture_loop()
        except Exception:  # never die silently: the status says failed
            log.exception("capture thread for %s crashed", self.name)
            self.state = "failed"
        finally:
            self._done.set()
            with self._cond:
                self._cond.notify_all()

    def _capture_loop(self) -> None:
        import cv2

        cap = self._open()
        if cap is None:
            self.state = "stopped" if self._stop.is_set() else "failed"
            return
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.fps = fps if 0 < fps < 1000 else 30.0
        self.state = "streaming"
        pos = 0        # position in the file (or running count, live)
        count = 0      # frames delivered, across loops
        loop_offset = 0.0
        failures = 0
        t0 = self.clock()
        while not self._stop.is_set():
            ok, img = cap.read()
            now = self.clock()
            if not ok or img is None:
                if not self.live:
                    if self.loop and pos > 0:
                        cap.release()
                        loop_offset += pos / self.fps
                        pos = 0
                        cap = self._open()
                        if cap is None:
                            break
                        continue
                    self.state = "ended"
                    break
                failures += 1
                if failures < self.max_read_failures:
                    self._stop.wait(0.01)
                    continue
                log.warning("%s: %d failed reads; reopening", self.name, failures)
                cap.release()
                self.state = "reconnecting"
                self.reconnects += 1
                cap = self._open()
                if cap is None:
                    self.state = "stopped" if self._stop.is_set() else "failed"
                    return
                self.state = "streaming"
                failures = 0
                continue
            failures = 0
            if self.live:
                frame = Frame(img, count, time.time(), now, now)
            else:
                ts = pos / self.fps
                if self.realtime:  # pace at the file's own rate
                    lag = t0 + (loop_offset + ts) - self.clock()
                    if lag > 0 and self._stop.wait(lag):
                        break
                    now = self.clock()
                frame = Frame(img, pos, ts, now, loop_offset + ts)
            pos += 1
            count += 1
            self._deliver(frame)
        cap.release()


def open_source(cfg: Any) -> CaptureSource:
    """A CaptureSource for ``cfg`` (a config.SourceConfig)."""
    spec = describe_source(cfg.uri)
    return CaptureSource(make_opener(spec, cfg), live=spec.live, realtime=cfg.realtime,
                         loop=cfg.loop, name=f"{spec.kind}:{redact_uri(str(spec.target))}",
                         max_read_failures=cfg.max_read_failures,
                         reconnect_min_s=cfg.reconnect_min_s, reconnect_max_s=cfg.reconnect_max_s)
