"""The kiosk-camera distortions: reproducible under a seed, varied across seeds."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.distort import _warp, clean_view, cutmix_box, distort, distort_seeded, paste_box
from trainer.kiosk_views import counter, place_on_counter


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(3)
    img = np.zeros((80, 80, 3), np.uint8)
    img[:, :40] = (200, 30, 30)
    img[20:60, 20:60] = (20, 180, 90)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_same_seed_same_view(photo, strength):
    a = distort_seeded(photo, 64, 123, strength)
    b = distort_seeded(photo, 64, 123, strength)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_generator_state_drives_views(photo):
    rng = np.random.default_rng(5)
    first = [distort(photo, 48, rng) for _ in range(3)]
    rng = np.random.default_rng(5)
    again = [distort(photo, 48, rng) for _ in range(3)]
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], first[1])


def test_different_seeds_differ(photo):
    views = [distort_seeded(photo, 64, s) for s in range(6)]
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            assert np.abs(views[i].astype(int) - views[j].astype(int)).mean() > 1.0


def test_tuple_seed_and_does_not_touch_input(photo):
    before = photo.copy()
    a = distort_seeded(photo, 64, (1, 2, 3))
    assert not np.array_equal(a, distort_seeded(photo, 64, (1, 2, 4)))
    np.testing.assert_array_equal(photo, before)


def test_strength_zero_is_the_clean_view(photo):
    np.testing.assert_array_equal(distort_seeded(photo, 64, 9, 0.0), clean_view(photo, 64))


def test_stronger_distortion_moves_further(photo):
    clean = clean_view(photo, 64).astype(float)

    def dist(s: float) -> float:
        return float(np.mean([np.abs(distort_seeded(photo, 64, k, s) - clean).mean() for k in range(12)]))

    assert dist(0.3) < dist(1.5)


def test_min_area_sets_the_zoom_range():
    # Each pixel's red value is its column: the range of red in a view is the
    # share of the photo's width the view shows.
    cols = np.tile(np.linspace(0, 255, 200, dtype=np.float32)[None, :, None], (200, 1, 3)).astype(np.uint8)

    def mean_width(min_area):
        spans = [np.ptp(_warp(cols, 32, np.random.default_rng(i), 1.0, min_area)[:, :, 0].astype(int)) / 255
                 for i in range(60)]
        return float(np.mean(spans))

    wide, zoomed = mean_width(0.9), mean_width(0.15)
    assert wide > 0.85 and zoomed < wide - 0.15, (wide, zoomed)


@pytest.mark.parametrize("seed", range(20))
def test_cutmix_box_is_inside_the_view_and_lam_is_the_share_left(seed):
    rng = np.random.default_rng(seed)
    y0, y1, x0, x1, lam = cutmix_box(48, rng)
    assert 0 <= y0 <= y1 <= 48 and 0 <= x0 <= x1 <= 48
    assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 48**2)
    assert cutmix_box(48, np.random.default_rng(seed)) == (y0, y1, x0, x1, lam)


def test_cutmix_boxes_vary_in_size_over_the_whole_range():
    lams = [cutmix_box(64, np.random.default_rng(s))[4] for s in range(400)]
    # a box centred near an edge is clipped, so the photo keeps more than 1 - U(0, 1) on average
    assert min(lams) < 0.25 and max(lams) > 0.95 and 0.55 < float(np.mean(lams)) < 0.8


def test_paste_box_takes_the_box_from_the_partner_and_keeps_the_rest():
    views = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (10, 20, 30)])
    before = views.copy()
    out = paste_box(views, np.array([1, 2, 0]), (2, 6, 4, 12, 0.0))
    np.testing.assert_array_equal(views, before)  # a copy, input untouched
    for i, partner in enumerate((1, 2, 0)):
        assert (out[i, 2:6, 4:12] == views[partner, 0, 0]).all()
        mask = np.ones((16, 16), bool)
        mask[2:6, 4:12] = False
        assert (out[i][mask] == views[i, 0, 0]).all()


def _product_share(view_f: np.ndarray) -> float:
    """Share of a kiosk view covered by a magenta product (red and blue far above green,
    whatever the lighting; a counter rarely is)."""
    r, g, b = (view_f[..., i].astype(np.float32) for i in range(3))
    return float(np.mean((r - g > 60) & (b - g > 60)))


def test_kiosk_views_hold_the_product_up_in_front_of_a_counter():
    magenta = np.zeros((80, 80, 3), np.uint8)
    magenta[...] = (255, 0, 255)
    shares, corners_counter = [], 0
    for seed in range(40):
        v = place_on_counter(magenta, 64, np.random.default_rng(seed), 1.0, 0.45)
        assert v.shape == (64, 64, 3) and v.dtype == np.float32
        shares.append(_product_share(v))
        corners = [v[0, 0], v[0, -1], v[-1, 0], v[-1, -1]]
        corners_counter += sum(_product_share(c[None, None]) == 0 for c in corners)
    # the product fills part of the view, never nothing and rarely all of it
    assert 0.2 < min(shares) and sum(s < 0.97 for s in shares) >= 30, shares
    assert 0.35 < float(np.mean(shares)) < 0.85, shares
    assert corners_counter > 0.6 * 4 * 40


def test_counters_vary_and_are_smooth():
    a, b = counter(64, np.random.default_rng(1)), counter(64, np.random.default_rng(2))
    assert np.abs(a - b).mean() > 10
    # a counter, unlike a product photo, has little fine detail
    assert float(np.abs(np.diff(a, axis=1)).mean()) < 4.0


def test_kiosk_share_sets_how_many_views_are_held_up():
    magenta = np.full((80, 80, 3), (255, 0, 255), np.uint8)

    def held_up(share: float) -> int:
        views = [distort(magenta, 48, np.random.default_rng(i), 1.0, 0.45, kiosk=share) for i in range(40)]
        return sum(_product_share(v) < 0.8 for v in views)

    assert held_up(0.0) == 0 and held_up(1.0) >= 28 and 6 < held_up(0.5) < 28
    np.testing.assert_array_equal(distort_seeded(magenta, 48, 3, 1.0, 0.45, 1.0),
                                  distort_seeded(magenta, 48, 3, 1.0, 0.45, 1.0))
