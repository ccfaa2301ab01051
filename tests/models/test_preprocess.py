from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from models.preprocess import PreprocessSpec, preprocess, preprocess_batch, to_uint8_rgb


def test_short_side_crop_keeps_centre_and_converts_bgr_to_rgb():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :50] = (255, 0, 0)      # blue in BGR, cropped away
    img[:, 50:150] = (0, 0, 255)   # red in BGR, the centre
    rgb = to_uint8_rgb(img, PreprocessSpec(size=32))
    assert rgb.shape == (32, 32, 3)
    assert (rgb[..., 0] > 250).all() and (rgb[..., 2] < 5).all()


def test_stretch_keeps_everything():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = 255
    rgb = to_uint8_rgb(img, PreprocessSpec(size=32, resize="stretch"))
    assert rgb[:, :14].min() > 250 and rgb[:, 18:].max() < 5


def test_normalisation_matches_spec():
    spec = PreprocessSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    x = preprocess(np.full((16, 16, 3), 255, np.uint8), spec)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [2.0, 1.0, 0.5], rtol=1e-6)


def test_batch_is_nchw_contiguous_and_equals_single():
    spec = PreprocessSpec(size=24)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(30, 40), (50, 25)]]
    b = preprocess_batch(imgs, spec)
    assert b.shape == (2, 3, 24, 24) and b.flags.c_contiguous
    np.testing.assert_array_equal(b[1], preprocess(imgs[1], spec))


def test_grey_and_bgra_inputs():
    spec = PreprocessSpec(size=16)
    assert preprocess(np.zeros((10, 10), np.uint8), spec).shape == (3, 16, 16)
    assert preprocess(np.zeros((10, 10, 4), np.uint8), spec).shape == (3, 16, 16)


@pytest.mark.parametrize("bad", [{"size": 4}, {"std": (0, 1, 1)}, {"resize": "zoom"}, {"extra": 1}])
def test_spec_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        PreprocessSpec(**bad)
