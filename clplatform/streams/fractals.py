"""Fractal images from iterated function systems (IFS): formula-driven categories.

FractalDB (Kataoka et al., "Pre-training without Natural Images", ACCV 2020) makes image
categories from formulas alone. Its official code (``param_search/ifs_search.py``,
``fractal_renderer/``) fixes the recipe this module follows:

- a category is an IFS of N affine maps ``(x, y) -> (a x + b y + e, c x + d y + f)``,
  N drawn uniformly from 2..7 (``np.random.randint(2, 8)``), the six parameters of every map
  uniform in [-1, 1], each map chosen with probability proportional to ``|ad - bc|``;
- a drawn IFS is kept as a category when its rendering fills enough of the image: 100,000
  points of the chaos game drawn on a 512x512 canvas (6 px padding) must cover at least
  20 % of its pixels (the filling rate, ``--rate 0.2``);
- an instance multiplies ONE of the six parameters (the same one in every map) by a weight
  in {0.8, 0.9, 1.0, 1.1, 1.2} (``weights_0.1.csv``: 25 variants) and flips the image
  (none, vertical, horizontal, both).

Deviations for 32x32 images (flagged, not FractalDB's): the chaos game runs many chains side
by side (vectorised numpy) instead of one long chain; the points are counted per pixel at 4x
the image side and summed down, the grey level showing the density (FractalDB's "patch"
rendering, a random 3x3 patch per point, fills a 32x32 image solid: measured); a random
margin varies the fractal's scale (75-98 % of the side) and position. Categories come from a named seed space: ``namespace``
"pretrain" (the pre-training corpus) and "downstream" (the downstream streams) draw from
disjoint NumPy seed sequences, so no pre-training category is a downstream one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: disjoint seed spaces: the first word of every category's seed sequence
NAMESPACES = {"pretrain": 0x1F5D_0000, "downstream": 0x1F5D_0001}

FILL_RATE = 0.2            # FractalDB's threshold (param_search/ifs_search.py --rate)
MAPS = (2, 7)              # number of affine maps, inclusive (np.random.randint(2, 8))
INSTANCE_WEIGHTS = (0.8, 0.9, 1.0, 1.1, 1.2)  # weights_0.1.csv
_CHECK_SIZE, _CHECK_PAD, _CHECK_POINTS = 512, 6, 100_000  # the filling-rate check
_CHAINS = 1000             # chaos-game chains run side by side
_BURN_IN = 20              # steps before a chain's points are drawn (the attractor's basin)
_SUPERSAMPLE = 4           # render at 4x the image side, then sum down
_RENDER_POINTS_PER_PIXEL = 0.75  # at 4x: ~12 points per image pixel
_POINTS_PER_PIXEL = _CHECK_POINTS / _CHECK_SIZE**2  # FractalDB's density: ~0.38 per pixel
_ESTIMATE_SIZE, _ESTIMATE_FACTOR = 128, 0.6  # quick filling-rate estimate before the check
_LIMIT = 1e6               # |coordinate| beyond this: the system diverges


@dataclass(frozen=True)
class FractalCategory:
    """One IFS: ``maps`` [N, 6] rows (a, b, c, d, e, f) and their probabilities [N]."""
    maps: np.ndarray
    probs: np.ndarray
    seed: tuple[int, int, int]    # (namespace word, seed, draw index): reproduces the draw
    fill_rate: float


def _draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(MAPS[0], MAPS[1] + 1))
    maps = rng.uniform(-1.0, 1.0, size=(n, 6))
    det = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    if det.sum() <= 0:
        det = np.ones(n)
    return maps, det / det.sum()


def chaos_game(maps: np.ndarray, probs: np.ndarray, points: int,
               rng: np.random.Generator) -> np.ndarray:
    """``points`` points [P, 2] of the IFS's attractor (chains start at the origin, as
    FractalDB's, and drop their first steps); non-finite or diverging points removed."""
    chains = min(_CHAINS, points)
    steps = -(-points // chains)
    cumulative = np.cumsum(probs)
    choice = np.minimum(np.searchsorted(cumulative, rng.random((_BURN_IN + steps, chains))),
                        len(maps) - 1)
    xy = np.zeros((chains, 2))
    out = np.empty((steps, chains, 2))
    a, b, c, d, e, f = (maps[:, i] for i in range(6))
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(_BURN_IN + steps):
            k = choice[t]
            x, y = xy[:, 0], xy[:, 1]
            xy = np.stack([a[k] * x + b[k] * y + e[k], c[k] * x + d[k] * y + f[k]], axis=1)
            xy[~(np.abs(xy) < _LIMIT).all(axis=1)] = np.nan  # diverged: stays NaN
            if t >= _BURN_IN:
                out[t - _BURN_IN] = xy
    out = out.reshape(-1, 2)[:points]
    return out[np.isfinite(out).all(axis=1)]


def _pixels(pts: np.ndarray, size: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Points rescaled into [pad, size - pad) on both axes (FractalDB's ``__rescale``)."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    ij = ((pts - lo) / span * (size - 2 * pad - 1) + pad).astype(np.int64)
    return ij[:, 1], ij[:, 0]  # rows from y, columns from x


def fill_rate(maps: np.ndarray, probs: np.ndarray, rng: np.random.Generator,
              size: int = _CHECK_SIZE) -> float:
    """FractalDB's filling rate: the share of a 512x512 canvas (6 px padding) that 100,000
    points of the chaos game cover (0 when the system diverges). ``size``: a smaller canvas
    with as many points per pixel (an estimate)."""
    points = int(round(_POINTS_PER_PIXEL * size * size))
    pts = chaos_game(maps, probs, points, rng)
    if len(pts) < points // 2:
        return 0.0
    rows, cols = _pixels(pts, size, max(1, round(_CHECK_PAD * size / _CHECK_SIZE)))
    covered = np.zeros(size * size, dtype=bool)
    covered[rows * size + cols] = True
    return float(covered.mean())


def fractal_categories(count: int, namespace: str, seed: int = 0,
                       threshold: float = FILL_RATE) -> list[FractalCategory]:
    """The first ``count`` IFS categories of ``namespace`` ("pretrain" or "downstream")
    whose filling rate reaches ``threshold``. Draw ``i`` uses the seed sequence
    ``(namespace word, seed, i)``: the namespaces never draw the same category, and the
    first k categories of a larger ``count`` are the k of a smaller one."""
    if namespace not in NAMESPACES:
        raise ValueError(f"namespace must be one of {', '.join(NAMESPACES)}, got {namespace!r}")
    found: list[FractalCategory] = []
    index = 0
    while len(found) < count:
        key = (NAMESPACES[namespace], int(seed), index)
        rng = np.random.default_rng(key)
        maps, probs = _draw(rng)
        # a quick estimate on a 128x128 canvas first (same points per pixel) skips the full
        # check for the many systems far below the threshold (speed only: a kept category
        # passes the full 512x512 check)
        if fill_rate(maps, probs, rng, _ESTIMATE_SIZE) < _ESTIMATE_FACTOR * threshold:
            index += 1
            continue
        rate = fill_rate(maps, probs, rng)
        if rate >= threshold:
            found.append(FractalCategory(maps, probs, key, rate))
        index += 1
    return found


def render_fractal(category: FractalCategory, rng: np.random.Generator,
                   size: int = 32) -> np.ndarray:
    """One instance of ``category`` as uint8 [size, size], white on black: one parameter
    (the same in every map) scaled by a FractalDB weight, the chaos game's points counted
    per pixel at 4x resolution with a random margin (the fractal's scale and position), the
    counts summed to ``size`` and shown as grey levels (square root of the density, its 90th
    percentile white), then a random flip."""
    maps = category.maps.copy()
    maps[:, rng.integers(6)] *= rng.choice(INSTANCE_WEIGHTS)
    big = size * _SUPERSAMPLE
    n_points = max(64, int(round(_RENDER_POINTS_PER_PIXEL * big * big)))
    pts = chaos_game(maps, category.probs, n_points, rng)
    if len(pts) < n_points // 2:  # the perturbation made it diverge: the category itself
        pts = chaos_game(category.maps, category.probs, n_points, rng)
    img = np.zeros((size, size), dtype=np.uint8)
    if len(pts):
        lo = int(rng.integers(1, big // 8))       # margins: scale 75-98 %, position shifts
        hi = int(rng.integers(1, big // 8))
        rows, cols = _pixels(pts, big - lo - hi + 2, 1)
        rows, cols = rows + lo - 1, cols + int(rng.integers(1, big // 8)) - 1
        keep = (rows < big) & (cols < big)
        counts = np.bincount(rows[keep] * big + cols[keep], minlength=big * big)
        density = counts.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).sum(axis=(1, 3))
        inked = density[density > 0]
        white = np.percentile(inked, 90) if len(inked) else 1.0
        img = np.round(np.clip(np.sqrt(density / max(white, 1e-9)), 0, 1) * 255
                       ).astype(np.uint8)
    flip = rng.integers(4)
    if flip & 1:
        img = img[::-1]
    if flip & 2:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def render_fractal_set(categories: list[FractalCategory], per_class: int, size: int,
                       seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` instances of each category: (uint8 [N, S, S], int64 labels [N]);
    ``salt`` separates independent sets (train, test) of one seed."""
    images = np.empty((len(categories) * per_class, size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(categories), dtype=np.int64), per_class)
    for label, category in enumerate(categories):
        rng = np.random.default_rng([seed, salt, label, *category.seed])
        for k in range(per_class):
            images[label * per_class + k] = render_fractal(category, rng, size)
    return images, labels
