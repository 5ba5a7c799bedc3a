"""Renditions of a glyph for ``mini-r``: drawing styles that never occur in pre-training.

Pre-training sees glyphs drawn as solid white ink on black by a font, moved by an affine
jitter (:mod:`clplatform.streams.render`). Each style here re-draws such a glyph the way a
human rendition of an object differs from its photo in ImageNet-R (art, cartoons, sketches,
embroidery, graffiti, origami, tattoos, ...): the shape stays, the way it is drawn changes.

Every style takes the jittered glyph as ink in [0, 1] on the 64x64 drawing canvas and a
random generator, and returns a float canvas in [0, 1] of the same size; the stream shrinks
it to 32x32 (box filter), so lengths below are canvas pixels (2 per output pixel).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

Style = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _thicken(ink: np.ndarray, size: int) -> np.ndarray:
    return ndimage.grey_dilation(ink, size=(size, size))


def _per_output_pixel(noise: np.ndarray) -> np.ndarray:
    """A field drawn per 32x32 output pixel, spread over its 2x2 canvas pixels."""
    return np.kron(noise, np.ones((2, 2), dtype=noise.dtype))


def outline(ink, rng):
    """Only the contour of a bolder glyph: a hollow letter (sign painting, origami edges)."""
    bold = _thicken(ink, 5)
    return np.clip(_thicken(bold, 3) - ndimage.grey_erosion(bold, size=(3, 3)), 0, 1)


def _pattern(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Stripes, a checkerboard or a dot grid at a random angle, period and phase."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    period = rng.uniform(6, 10)
    pu, pv = (u / period + rng.uniform()) % 1, (v / period + rng.uniform()) % 1
    kind = rng.integers(3)
    if kind == 0:
        return (pu < 0.5).astype(np.float32)
    if kind == 1:
        return ((pu < 0.5) ^ (pv < 0.5)).astype(np.float32)
    return (((pu - 0.5) ** 2 + (pv - 0.5) ** 2) < 0.09).astype(np.float32)


def texture(ink, rng):
    """A bold glyph filled with a woven pattern (embroidery, patterned fabric)."""
    return _thicken(ink, 5) * (0.25 + 0.75 * _pattern(ink.shape, rng))


def noise(ink, rng):
    """Heavy per-pixel noise over a dimmed glyph (a grainy, badly lit photograph)."""
    sigma = rng.uniform(0.18, 0.25)
    grain = _per_output_pixel(rng.normal(0, sigma, (ink.shape[0] // 2, ink.shape[1] // 2)))
    return np.clip(0.15 + 0.7 * ink + grain.astype(np.float32), 0, 1)


def wave(ink, rng):
    """A wavy, rubber-sheet distortion of the glyph (cartoons, graffiti lettering)."""
    y, x = np.mgrid[0:ink.shape[0], 0:ink.shape[1]].astype(np.float32)
    amp = rng.uniform(1.5, 2.5, size=2)
    length = rng.uniform(24, 40, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    src_x = x + amp[0] * np.sin(2 * np.pi * y / length[0] + phase[0])
    src_y = y + amp[1] * np.sin(2 * np.pi * x / length[1] + phase[1])
    return ndimage.map_coordinates(ink, [src_y, src_x], order=1, mode="constant")


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean image to 1-pixel-wide centre lines."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = [np.roll(np.roll(img, -dy, 0), -dx, 1) for dy, dx in
                 ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))]
            neighbours = sum(p)
            ring = p + [p[0]]
            transitions = sum(((ring[i] == 0) & (ring[i + 1] == 1)).astype(np.uint8)
                              for i in range(8))
            if step == 0:
                cond = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                cond = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            remove = ((img == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1)
                      & cond)
            if remove.any():
                img[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def pen(ink, rng):
    """The glyph's centre line drawn twice by a shaky hand with a thin pen of varying
    pressure (sketches, handwriting-like strokes)."""
    line = _skeleton(ink > 0.5).astype(np.float32)
    y, x = np.mgrid[0:ink.shape[0], 0:ink.shape[1]].astype(np.float32)
    drawn = np.zeros_like(ink)
    for _ in range(2):  # two passes, each with its own smooth tremor
        shake = [ndimage.gaussian_filter(rng.normal(0, 1, ink.shape), 6) for _ in range(2)]
        shake = [s / (np.abs(s).max() + 1e-6) * rng.uniform(2.0, 3.5) for s in shake]
        drawn = np.maximum(drawn, ndimage.map_coordinates(line, [y + shake[0], x + shake[1]],
                                                          order=1))
    pressure = 0.55 + 0.45 * ndimage.gaussian_filter(rng.uniform(0, 1, ink.shape), 4) * 2
    return np.clip(_thicken(drawn, 3) * np.clip(pressure, 0, 1), 0, 1)


def inverted(ink, rng):
    """Dark ink on light paper (print, pencil on paper, tattoo on skin)."""
    paper = rng.uniform(0.75, 1.0)
    return paper - ink * rng.uniform(0.6, paper)


def stipple(ink, rng):
    """The glyph as scattered dots (pointillism, dotted prints)."""
    dots = _per_output_pixel(rng.uniform(size=(ink.shape[0] // 2, ink.shape[1] // 2)) < 0.7)
    return _thicken(ink, 3) * dots


def pixelated(ink, rng):
    """Coarse blocks (mosaics, cross-stitch, pixel art)."""
    from PIL import Image
    blocks = int(rng.choice((16, 20, 24)))
    small = Image.fromarray(ink.astype(np.float32), "F").resize((blocks, blocks), Image.BOX)
    small = Image.fromarray((np.asarray(small) > 0.3).astype(np.float32), "F")
    return np.asarray(small.resize(ink.shape[::-1], Image.NEAREST), dtype=np.float32)


def shadow(ink, rng):
    """The glyph in front of a grey extruded shadow (cartoon and 3-D signage lettering)."""
    angle = rng.uniform(0, 2 * np.pi)
    depth = rng.uniform(4, 7)
    behind = np.zeros_like(ink)
    for step in np.linspace(1, depth, 6):
        behind = np.maximum(behind, ndimage.shift(ink, (step * np.sin(angle),
                                                        step * np.cos(angle)), order=1))
    return np.maximum(ink, 0.45 * behind * (1 - ink))


def spray(ink, rng):
    """Spray paint: a soft, blurred glyph drawn by a speckled spray (graffiti)."""
    soft = ndimage.gaussian_filter(_thicken(ink, 3), rng.uniform(1.2, 2.0))
    soft = soft / (soft.max() + 1e-6)
    return (rng.uniform(size=ink.shape) < soft * 1.2).astype(np.float32) * rng.uniform(0.7, 1)


#: the styles of ``mini-r``, in a fixed order (sample k of a class is drawn in style k mod 10)
STYLES: dict[str, Style] = {
    "outline": outline, "texture": texture, "noise": noise, "wave": wave, "pen": pen,
    "inverted": inverted, "stipple": stipple, "pixelated": pixelated, "shadow": shadow,
    "spray": spray,
}
