"""FractalDB-style IFS categories (clplatform.streams.fractals)."""
from __future__ import annotations

import numpy as np
import pytest

from clplatform.streams import fractals as F


@pytest.fixture(scope="module")
def pretrain_cats():
    return F.fractal_categories(4, "pretrain", seed=0)


def test_categories_are_deterministic_and_prefix_stable(pretrain_cats):
    again = F.fractal_categories(2, "pretrain", seed=0)
    for a, b in zip(pretrain_cats, again):
        assert a.seed == b.seed
        np.testing.assert_array_equal(a.maps, b.maps)
    other_seed = F.fractal_categories(1, "pretrain", seed=1)[0]
    assert not np.array_equal(other_seed.maps, pretrain_cats[0].maps)


def test_categories_follow_fractaldb(pretrain_cats):
    for cat in pretrain_cats:
        n = len(cat.maps)
        assert 2 <= n <= 7 and cat.maps.shape == (n, 6)
        assert np.all(np.abs(cat.maps) <= 1)
        det = np.abs(cat.maps[:, 0] * cat.maps[:, 3] - cat.maps[:, 1] * cat.maps[:, 2])
        np.testing.assert_allclose(cat.probs, det / det.sum())
        assert cat.fill_rate >= F.FILL_RATE


def test_fill_rate_filter_rejects_thin_systems():
    # a contraction to one point covers almost nothing; Sierpinski's triangle covers little
    point = np.array([[0.1, 0, 0, 0.1, 0, 0], [0.1, 0, 0, 0.1, 0.01, 0]])
    rng = np.random.default_rng(0)
    assert F.fill_rate(point, np.array([0.5, 0.5]), rng) < 0.01
    # the square's four half-size copies spread the points evenly: 1 - exp(-0.4) ~ 0.33
    square = np.array([[0.5, 0, 0, 0.5, ex, ey] for ex in (0, 0.5) for ey in (0, 0.5)])
    assert F.fill_rate(square, np.full(4, 0.25), rng) > 0.3
    # and a category search with a higher threshold keeps only systems above it
    strict = F.fractal_categories(2, "downstream", seed=0, threshold=0.25)
    assert all(c.fill_rate >= 0.25 for c in strict)
    # draws the search skipped had a lower filling rate
    skipped = strict[0].seed[2]
    if skipped:
        rng = np.random.default_rng((F.NAMESPACES["downstream"], 0, 0))
        maps, probs = F._draw(rng)
        assert F.fill_rate(maps, probs, rng) < 0.25


def test_namespaces_never_share_a_category(pretrain_cats):
    down = F.fractal_categories(4, "downstream", seed=0)
    pre_keys = {c.maps.tobytes() for c in pretrain_cats}
    assert not pre_keys & {c.maps.tobytes() for c in down}
    assert {c.seed[0] for c in pretrain_cats}.isdisjoint({c.seed[0] for c in down})
    with pytest.raises(ValueError):
        F.fractal_categories(1, "other")


def test_render_is_deterministic_and_varies(pretrain_cats):
    x1, y1 = F.render_fractal_set(pretrain_cats[:2], 3, 32, seed=0, salt=0)
    x2, _ = F.render_fractal_set(pretrain_cats[:2], 3, 32, seed=0, salt=0)
    x3, _ = F.render_fractal_set(pretrain_cats[:2], 3, 32, seed=0, salt=1)
    assert x1.dtype == np.uint8 and x1.shape == (6, 32, 32)
    assert y1.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(x1[0], x1[1])            # instances differ
    ink = (x1 > 0).mean(axis=(1, 2))
    assert np.all(ink > 0.05) and np.all(ink < 0.95)   # a shape, not empty, not solid
    assert x1.max() == 255
    big = F.render_fractal(pretrain_cats[0], np.random.default_rng(0), 64)
    assert big.shape == (64, 64)
