"""Frame sources over real OpenCV decoding of a real clip and real image files."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edge_runtime.config import SourceConfig
from edge_runtime.sources import (
    CaptureSource,
    ImageFolderCapture,
    crop_roi,
    describe_source,
    open_source,
    redact_uri,
)
from models.errors import ConfigError


def drain(src, limit: int = 10_000, timeout: float = 5.0):
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < limit and time.monotonic() < deadline:
        f = src.read(timeout=0.2)
        if f is None:
            if src.ended:
                break
            continue
        frames.append(f)
    return frames


def test_file_fast_delivers_every_frame_in_order(shop_clip):
    src = open_source(SourceConfig(uri=str(shop_clip.path)))
    src.start()
    frames = drain(src)
    src.stop()
    assert [f.index for f in frames] == list(range(shop_clip.frames))
    assert frames[30].source_ts == pytest.approx(1.0)
    assert frames[-1].t == pytest.approx((shop_clip.frames - 1) / 30.0)
    assert src.ended and src.state == "ended" and src.dropped == 0
    assert frames[0].image.shape == (240, 320, 3)


def test_file_realtime_is_paced_and_keeps_newest(shop_clip):
    src = open_source(SourceConfig(uri=str(shop_clip.path), realtime=True))
    src.start()
    t0 = time.monotonic()
    first = src.read(timeout=2.0)
    time.sleep(0.5)                       # a slow consumer
    newest = src.read(timeout=1.0)
    src.stop()
    elapsed = time.monotonic() - t0
    assert first is not None and newest is not None
    # paced at 30 fps: after ~0.5 s we are ~15 frames in, not at the end of the file
    assert 8 <= newest.index <= 8 + int(elapsed * 30) + 2
    assert src.dropped >= newest.index - first.index - 2   # frames skipped, counted


def test_file_loop_restarts(shop_clip):
    src = open_source(SourceConfig(uri=str(shop_clip.path), loop=True))
    src.start()
    frames = drain(src, limit=shop_clip.frames + 10)
    src.stop()
    assert [f.index for f in frames[-10:]] == list(range(10))
    assert frames[-1].t > frames[shop_clip.frames - 1].t   # the decision clock keeps going


def test_folder_source_skips_unreadable(tmp_path, tiny_catalogue):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(sorted(tiny_catalogue.rglob("*.jpg"))[:3]):
        (folder / f"{i}.jpg").write_bytes(p.read_bytes())
    (folder / "1b.jpg").write_bytes(b"not a jpeg")
    assert describe_source(str(folder)).kind == "folder"
    src = open_source(SourceConfig(uri=str(folder)))
    src.start()
    frames = drain(src)
    src.stop()
    assert len(frames) == 3 and src.state == "ended"


class StallingCapture:
    """A real cv2.VideoCapture that stops delivering after ``good`` frames
    (read() returns False, as a dead camera or stream does)."""

    def __init__(self, path, good: int) -> None:
        self.cap = cv2.VideoCapture(str(path))
        self.good = good

    def isOpened(self):  # noqa: N802
        return self.cap.isOpened()

    def read(self):
        if self.good <= 0:
            return False, None
        self.good -= 1
        return self.cap.read()

    def get(self, prop):
        return self.cap.get(prop)

    def release(self):
        self.cap.release()


def test_live_source_that_stops_delivering_is_reopened(shop_clip):
    opened = []

    def opener():
        opened.append(time.monotonic())
        if len(opened) == 2:                    # the camera is away for one attempt
            return StallingCapture("/nonexistent.mp4", 0)
        return StallingCapture(shop_clip.path, 10 if len(opened) == 1 else 1000)

    states = []
    src = CaptureSource(opener, live=True, max_read_failures=3, reconnect_min_s=0.05,
                        reconnect_max_s=0.1, name="flaky")
    src.start()
    frames = []
    deadline = time.monotonic() + 10
    while len(frames) < 30 and time.monotonic() < deadline:
        f = src.read(timeout=0.1)
        states.append(src.state)
        if f is not None:
            frames.append(f)
    src.stop()
    assert len(opened) >= 3 and src.reconnects >= 1
    assert len(frames) == 30                       # frames flow again after the reopen
    assert "reconnecting" in states or src.reconnects >= 1
    assert [f.index for f in frames] == sorted(f.index for f in frames)
    assert src.state == "stopped"


def test_live_source_gives_up_when_told(shop_clip):
    src = CaptureSource(lambda: StallingCapture("/nonexistent.mp4", 0), live=True,
                        reconnect_min_s=0.01, reconnect_max_s=0.01, max_reconnects=2)
    src.start()
    assert src.read(timeout=2.0) is None
    deadline = time.monotonic() + 5
    while not src.ended and time.monotonic() < deadline:
        time.sleep(0.02)
    assert src.ended and src.state == "failed"


@pytest.mark.parametrize("uri, kind, live", [
    ("0", "v4l2", True),
    ("/dev/video2", "v4l2", True),
    ("nvarguscamerasrc ! nvvidconv ! appsink", "gstreamer", True),
    ("rtsp://cam:554/stream", "url", True),
    ("http://cam/mjpeg", "url", True),
])
def test_describe_source(uri, kind, live):
    spec = describe_source(uri)
    assert (spec.kind, spec.live) == (kind, live)


def test_describe_source_errors(tmp_path):
    with pytest.raises(ConfigError, match="source.uri"):
        describe_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(ConfigError, match="unsupported scheme"):
        describe_source("ftp://x/y")


def test_redact_uri():
    assert redact_uri("rtsp://admin:pw@10.0.0.5:554/s") == "rtsp://***@10.0.0.5:554/s"
    assert redact_uri("rtsp://10.0.0.5/s") == "rtsp://10.0.0.5/s"


@pytest.mark.parametrize("roi, shape", [
    (None, (120, 160)), ((10, 20, 50, 40), (40, 50)), ((150, 100, 50, 50), (20, 10)),
])
def test_crop_roi(roi, shape):
    img = np.zeros((120, 160, 3), np.uint8)
    assert crop_roi(img, roi).shape[:2] == shape


def test_image_folder_capture_fps(tmp_path):
    assert ImageFolderCapture(tmp_path, 7.0).get(cv2.CAP_PROP_FPS) == 7.0
    assert not ImageFolderCapture(tmp_path, 7.0).isOpened()
