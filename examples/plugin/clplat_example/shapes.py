"""A custom stream: six classes of noisy geometric patterns drawn with NumPy.

Usable three ways:
- as a Python callable, no installation:  clplat run --stream path/to/shapes.py:make_shapes
- registered by name (this module, through the plugin's entry point):  --stream shapes
- from Python:  clplatform.run("naive", streams.from_arrays(**make_shapes())...)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATTERNS = ("horizontal", "vertical", "diagonal", "checker", "ring", "cross")


def _draw(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.integers(4, 8)
    phase = rng.integers(0, period)
    if kind == "horizontal":
        img = (yy + phase) % period < period / 2
    elif kind == "vertical":
        img = (xx + phase) % period < period / 2
    elif kind == "diagonal":
        img = (xx + yy + phase) % period < period / 2
    elif kind == "checker":
        img = ((xx // period) + (yy // period)) % 2 == 0
    elif kind == "ring":
        c = size / 2 + rng.normal(0, 2, 2)
        r = np.hypot(yy - c[0], xx - c[1])
        img = np.abs(r - rng.uniform(size / 5, size / 3)) < 2
    else:
        c = (size / 2 + rng.normal(0, 2, 2)).astype(int)
        img = (np.abs(yy - c[0]) < 2) | (np.abs(xx - c[1]) < 2)
    noisy = img * 200 + rng.integers(0, 55, (size, size))
    return noisy.astype(np.uint8)


def make_shapes(samples_per_class: int = 30, experiences: int = 3, size: int = 32,
                seed: int = 0) -> dict:
    """Train/test arrays plus split options: what a stream callable may return."""
    rng = np.random.default_rng(seed)
    n = samples_per_class
    x = np.stack([_draw(k, size, rng) for k in PATTERNS for _ in range(n)])
    y = np.repeat(np.arange(len(PATTERNS)), n)
    return {"train": (x, y), "test_fraction": 0.25, "experiences": experiences,
            "class_names": list(PATTERNS), "name": "shapes", "seed": seed}


# ---- registered by name (the plugin's entry point loads this module) --------------------
from clplatform.options import opt  # noqa: E402
from clplatform.registry import register_stream  # noqa: E402


@dataclass
class ShapesOptions:
    samples_per_class: int = opt(30, "training + test images per class", min=4)
    experiences: int = opt(3, "experiences (2 classes each by default)", min=1, max=6)
    seed: int | None = opt(None, "seed of the drawings (default: run seed)")


@register_stream("shapes", options=ShapesOptions,
                 help="example plugin: six noisy geometric patterns, class-incremental")
def shapes(opts: ShapesOptions):
    from clplatform.streams import from_arrays
    data = make_shapes(opts.samples_per_class, opts.experiences, seed=opts.seed or 0)
    x, y = data.pop("train")
    return from_arrays(x, y, **data)
