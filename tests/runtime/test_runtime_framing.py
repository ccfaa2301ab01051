"""Localisation: the scene model finds a product at a known box on synthetic
frames, and the framing crops the encoder's views around it."""

from __future__ import annotations

import numpy as np
import pytest
from scene_support import H, W, counter, frame, iou, product

from edge_runtime.framing import crop_views, sharpness, square_box
from edge_runtime.presence import SceneModel


@pytest.mark.parametrize("at, side", [((10, 10), 60), ((240, 150), 70), ((120, 80), 100),
                                      ((0, 170), 64), ((200, 0), 110)])
def test_scene_model_finds_the_known_box(at, side):
    bg, item = counter(), product(side=side)
    rng = np.random.default_rng(0)
    m = SceneModel()
    for i in range(10):
        m.update(frame(bg, rng=rng), i / 30)
    states = [m.update(frame(bg, rng=rng, item=item, at=at), (10 + i) / 30) for i in range(5)]
    truth = (at[0], at[1], side, side)
    assert states[-1].present
    assert iou(states[-1].box, truth) > 0.85, (states[-1].box, truth)


def test_square_box_grows_shrinks_and_stays_inside():
    assert square_box((100, 50, 40, 20), (320, 240), margin=0.0) == (100, 40, 40, 40)
    assert square_box((100, 50, 40, 40), (320, 240), margin=0.25) == (90, 40, 60, 60)
    assert square_box((100, 50, 40, 40), (320, 240), margin=-0.25, min_side=16) == (110, 60, 20, 20)
    assert square_box((100, 50, 40, 40), (320, 240), margin=-0.25) == (104, 54, 32, 32)   # min_side
    assert square_box((0, 0, 30, 30), (320, 240), margin=0.5) == (0, 0, 60, 60)          # shifted in
    assert square_box((300, 220, 20, 20), (320, 240), margin=0.5) == (280, 200, 40, 40)
    assert square_box((0, 0, 320, 200), (320, 240), margin=0.1) == (40, 0, 240, 240)      # capped
    assert square_box((10, 10, 4, 4), (320, 240), margin=0.0, min_side=32)[2] == 32


def test_views_show_the_product_at_every_margin():
    bg, item = counter(), product(side=90)
    img = frame(bg, item=item, at=(150, 60), noise=0.0)
    box = (150, 60, 90, 90)
    full, inset = crop_views(img, box, [0.1, -0.2])
    assert full.shape == (108, 108, 3) and inset.shape == (54, 54, 3)
    assert np.array_equal(inset, item[18:72, 18:72])      # the middle of the product only
    assert np.array_equal(full[9:99, 9:99], item)          # the product with a little counter
    assert crop_views(img, None, [0.1])[0] is img          # no box: the whole view


def test_sharpness_drops_with_blur():
    import cv2

    img = product(side=120)
    assert sharpness(cv2.GaussianBlur(img, (0, 0), 3)) < 0.3 * sharpness(img)
    assert W > 0 and H > 0


@pytest.mark.parametrize("side", ["bottom", "left"])
def test_the_arm_holding_the_product_is_trimmed_off(side):
    """A hand-held product: the arm reaches the border of the view; the box is
    the product's, not product plus arm."""
    import cv2

    bg, item = counter(), product(side=80)
    rng = np.random.default_rng(1)
    m = SceneModel()
    for i in range(10):
        m.update(frame(bg, rng=rng), i / 30)
    img = frame(bg, rng=rng, item=item, at=(120, 60))
    if side == "bottom":
        cv2.rectangle(img, (150, 140), (172, H), (120, 150, 205), -1)    # the arm, 22 px wide
    else:
        cv2.rectangle(img, (0, 90), (120, 110), (120, 150, 205), -1)
    states = [m.update(img, (10 + i) / 30) for i in range(3)]
    assert iou(states[-1].box, (120, 60, 80, 80)) > 0.8, states[-1].box
