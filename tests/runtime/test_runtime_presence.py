"""The scene model (edge_runtime/presence.py) on synthetic kiosk scenes decoded
from real mp4 files: a product on and off, slow light drift, lights switched,
a shadow, a camera bump, a new counter, a product left lying and taken away."""

from __future__ import annotations

import numpy as np
import pytest
from scene_support import counter, frame, iou, product, through_mp4

from edge_runtime.presence import PresenceParams, SceneModel

FPS = 30.0


def run(frames: list[np.ndarray], params: PresenceParams | None = None) -> list:
    m = SceneModel(params)
    return [m.update(f, i / FPS) for i, f in enumerate(frames)]


def test_product_on_and_off(tmp_path):
    bg, item = counter(), product()
    rng = np.random.default_rng(0)
    frames = ([frame(bg, rng=rng) for _ in range(20)]
              + [frame(bg, item=item, at=(120 + i % 3, 70), rng=rng) for i in range(40)]
              + [frame(bg, rng=rng) for _ in range(20)])
    states = run(through_mp4(tmp_path / "onoff.mp4", frames))
    present = [s.present for s in states]
    assert not any(present[:20])
    assert all(present[22:60])                 # on within enter_frames (2)
    assert not any(present[64:])               # off within leave_frames (4)
    for s in states[25:60]:
        assert iou(s.box, (121, 70, 80, 80)) > 0.8
    assert states[0].event == "learning"


def test_slow_light_drift_and_colour_shift_are_not_a_product(tmp_path):
    bg, item = counter(), product()
    rng = np.random.default_rng(1)
    frames = []
    for i in range(240):   # 8 s: 40% darker and warmer, then a product
        u = min(i, 200) / 200
        gain = (1 - 0.4 * u) * np.array([1 - 0.15 * u, 1.0, 1 + 0.1 * u])
        frames.append(frame(bg, gain=gain, rng=rng, item=item if i >= 210 else None, at=(40, 40)))
    states = run(through_mp4(tmp_path / "drift.mp4", frames))
    assert not any(s.present for s in states[:205])
    assert all(s.present for s in states[213:])


def test_lights_switched_on_the_empty_counter():
    bg, rng = counter(), np.random.default_rng(2)
    frames = [frame(bg, rng=rng, gain=1.0 if i < 30 else 0.65) for i in range(60)]
    assert not any(s.present for s in run(frames))


def test_a_shadow_is_not_a_product():
    bg, rng = counter(), np.random.default_rng(3)
    frames = [frame(bg, rng=rng, shadow=(160, 120, 50) if i >= 20 else None) for i in range(50)]
    assert not any(s.present for s in run(frames))
    frames = [frame(bg, rng=rng, shadow=(160, 120, 50) if i >= 20 else None) for i in range(50)]
    off = run(frames, PresenceParams(shadows=False))
    assert any(s.present for s in off)         # the shadow test is what keeps it out


def test_camera_bump_is_relearnt_not_a_product(tmp_path):
    bg, item = counter(), product()
    rng = np.random.default_rng(4)
    frames = ([frame(bg, rng=rng) for _ in range(20)]
              + [frame(bg, shift=(12, 7), rng=rng) for _ in range(30)]
              + [frame(bg, shift=(12, 7), rng=rng, item=item, at=(200, 100)) for _ in range(20)])
    states = run(through_mp4(tmp_path / "bump.mp4", frames))
    assert not any(s.present for s in states[:50])
    assert "relearnt" in [s.event for s in states[20:30]]
    assert all(s.present for s in states[53:])
    assert iou(states[-1].box, (200, 100, 80, 80)) > 0.8


def test_a_new_counter_is_relearnt():
    rng = np.random.default_rng(5)
    a = counter(seed=0)
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    tiles = ((xx // 30 + yy // 30) % 2).astype(np.float32)[:, :, None]
    b = np.where(tiles > 0, np.float32(200), np.float32(150)) * np.ones(3, np.float32)   # a tiled one
    frames = [frame(a, rng=rng) for _ in range(20)] + [frame(b, rng=rng) for _ in range(30)]
    states = run(frames)
    assert not any(s.present for s in states)
    assert states[-1].event == "" and any(s.event == "relearnt" for s in states)


def test_left_lying_becomes_background_and_its_removal_is_not_a_product():
    bg, item = counter(), product()
    rng = np.random.default_rng(6)
    frames = ([frame(bg, rng=rng) for _ in range(10)]
              + [frame(bg, rng=rng, item=item, at=(100, 60)) for _ in range(60)]   # 2 s lying
              + [frame(bg, rng=rng) for _ in range(30)])
    states = run(frames, PresenceParams(relearn_s=1.0))
    events = [s.event for s in states]
    absorbed = events.index("absorbed")
    assert 10 + 30 <= absorbed <= 10 + 35       # after relearn_s of being there
    assert all(s.present for s in states[13:absorbed])
    assert not any(s.present for s in states[absorbed:])
    assert "restored" in events[70:73]          # taken away: the old counter comes back


@pytest.mark.parametrize("bad", [dict(min_area=1.5), dict(scene_change=0), dict(work_width=8)])
def test_bad_params_are_refused(bad):
    with pytest.raises(ValueError):
        PresenceParams(**bad)


def test_a_product_held_close_is_a_product_not_a_scene_change():
    """63% of the frame (val-clip.mp4's products cover up to 57%), but the
    border around it is still the counter."""
    bg, item = counter(), product(side=220)
    rng = np.random.default_rng(7)
    frames = [frame(bg, rng=rng) for _ in range(10)] + [
        frame(bg, rng=rng, item=item, at=(50 + i % 2, 10)) for i in range(20)]
    states = run(frames)
    assert all(s.present for s in states[12:]) and not any(s.event for s in states[10:])
    assert iou(states[-1].box, (51, 10, 220, 220)) > 0.85
