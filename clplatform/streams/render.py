"""Render characters with the TrueType fonts matplotlib ships: an offline image source.

Each sample is one character drawn in one font, then moved by a random affine jitter
(rotation, scale, shear, translation). Glyphs keep their natural size and baseline, so
``o`` and ``O`` differ as they do on a page. A font that lacks a character is never used
for it (a missing glyph would render as a box).
"""
from __future__ import annotations

import math
import string
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RENDER_VERSION = 1  # bump when rendering changes: it is part of every cache key

LATIN = string.digits + string.ascii_uppercase + string.ascii_lowercase  # 62 classes

# Font families of matplotlib's bundled fonts; a family is one domain of `glyphs-domains`.
FONT_FAMILIES: dict[str, tuple[str, ...]] = {
    "sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
             "DejaVuSans-BoldOblique.ttf"),
    "serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
              "DejaVuSerif-BoldItalic.ttf"),
    "mono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
             "DejaVuSansMono-BoldOblique.ttf"),
    "stix": ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
             "STIXGeneralBolIta.ttf"),
    "cm": ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf"),
}

_CANVAS = 64      # glyphs are drawn on a 64x64 canvas, then jittered and resized
_FONT_SIZE = 40   # in pixels on that canvas
_BASELINE = 46    # y of the baseline on that canvas


def font_dir() -> Path:
    import matplotlib
    return Path(matplotlib.get_data_path(), "fonts", "ttf")


@lru_cache(maxsize=None)
def _font(name: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / name), _FONT_SIZE)


@lru_cache(maxsize=None)
def covered_codes(name: str) -> frozenset[int]:
    """The code points font file ``name`` has a glyph for (its character map)."""
    from matplotlib.ft2font import FT2Font
    font = FT2Font(str(font_dir() / name))
    return frozenset(code for code, _glyph in font.get_charmap().items())


def has_glyph(font: str, char: str) -> bool:
    """True when ``font`` really contains ``char`` (so it does not render as a box)."""
    return ord(char) in covered_codes(font)


def fonts_for(char: str, families: tuple[str, ...] | None = None) -> list[str]:
    """The fonts (of the given families, default all) that contain ``char``."""
    names = [f for fam in (families or tuple(FONT_FAMILIES)) for f in FONT_FAMILIES[fam]]
    return [f for f in names if has_glyph(f, char)]


@lru_cache(maxsize=4096)
def base_glyph(char: str, font: str) -> Image.Image:
    """``char`` drawn white on black, horizontally centred, on the font's baseline."""
    img = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(img)
    left, _top, right, _bottom = draw.textbbox((0, _BASELINE), char, font=_font(font),
                                               anchor="ls")
    x = (_CANVAS - (right - left)) / 2 - left
    draw.text((x, _BASELINE), char, fill=255, font=_font(font), anchor="ls")
    return img


def _affine(rng: np.random.Generator, strength: float) -> tuple[float, ...]:
    """Inverse affine coefficients (output -> input pixel) for PIL, about the centre."""
    angle = math.radians(rng.uniform(-12, 12) * strength)
    scale = 1.0 + rng.uniform(-0.15, 0.12) * strength
    shear = rng.uniform(-0.2, 0.2) * strength
    tx, ty = rng.uniform(-4, 4, size=2) * strength
    cos, sin = math.cos(angle), math.sin(angle)
    # forward map: A = R(angle) @ [[1, shear], [0, 1]] * scale ; invert it for PIL
    a, b = scale * cos, scale * (cos * shear - sin)
    c, d = scale * sin, scale * (sin * shear + cos)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    cx = cy = _CANVAS / 2
    # x_in = inv @ (x_out - centre - t) + centre
    off_x = cx - ia * (cx + tx) - ib * (cy + ty)
    off_y = cy - ic * (cx + tx) - id_ * (cy + ty)
    return (ia, ib, off_x, ic, id_, off_y)


def render(char: str, font: str, rng: np.random.Generator, image_size: int,
           jitter: float = 1.0) -> np.ndarray:
    """One jittered sample of ``char`` in ``font`` as a uint8 array (image_size²)."""
    img = base_glyph(char, font)
    if jitter > 0:
        img = img.transform(img.size, Image.AFFINE, _affine(rng, jitter),
                            resample=Image.BILINEAR)
    if image_size != _CANVAS:
        img = img.resize((image_size, image_size), Image.BOX)
    return np.asarray(img, dtype=np.uint8)


def render_set(chars: str, fonts_per_char: list[list[str]], per_class: int, image_size: int,
               seed: int, salt: int, jitter: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` samples of each character, cycling through its fonts.

    Returns ``(images uint8 [N, S, S], labels int64 [N])``; labels index ``chars``.
    ``salt`` separates independent sets (train vs test) made with the same seed.
    """
    images = np.empty((len(chars) * per_class, image_size, image_size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(chars), dtype=np.int64), per_class)
    for label, (char, fonts) in enumerate(zip(chars, fonts_per_char)):
        rng = np.random.default_rng([seed, salt, label])
        order = rng.permutation(len(fonts))
        for k in range(per_class):
            font = fonts[order[k % len(fonts)]]
            images[label * per_class + k] = render(char, font, rng, image_size, jitter)
    return images, labels


def shape_pixels(chars: str, fonts: list[str], any_size: bool = False) -> np.ndarray:
    """float32 [N, 256]: each character in its font, 16x16 (box-filtered: forgives 1-2 px);
    ``any_size``: its ink cropped to its box and centred on a square first (its shape at any
    size: c/C, s/S, ᴇ/E alike)."""
    out = np.empty((len(chars), 256), dtype=np.float32)
    for i, (ch, font) in enumerate(zip(chars, fonts)):
        img = base_glyph(ch, font)
        box = img.getbbox() if any_size else None
        if box:
            img = img.crop(box)
            side = max(img.size)
            square = Image.new("L", (side, side), 0)
            square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
            img = square
        out[i] = np.asarray(img.resize((16, 16), Image.BOX), dtype=np.float32).reshape(-1) / 255.0
    return out


def lookalikes_at_any_size(chars: str, fonts: list[str], others: str,
                           other_fonts: tuple[str, ...], tolerance: float) -> np.ndarray:
    """bool [len(chars)]: characters whose shape at any size (``chars[i]`` in ``fonts[i]``)
    is alike (pixel difference under ``tolerance`` times the ink of both) that of a
    character of ``others`` in any of ``other_fonts``."""
    mine = shape_pixels(chars, fonts, any_size=True)
    found = np.zeros(len(chars), dtype=bool)
    for font in other_fonts:
        drawn = "".join(c for c in others if has_glyph(font, c))
        theirs = shape_pixels(drawn, [font] * len(drawn), any_size=True)
        found |= alike_pairs(mine, theirs, tolerance).any(axis=1)
    return found


def alike_pairs(a: np.ndarray, b: np.ndarray, tolerance: float, block: int = 64) -> np.ndarray:
    """bool [len(a), len(b)]: pairs whose absolute pixel difference is below ``tolerance``
    times the ink of both. Only pairs whose inks are close enough are compared (the pixel
    difference is at least the difference of the inks; a 1 % margin covers rounding)."""
    ink_a, ink_b = a.sum(axis=1), b.sum(axis=1)
    out = np.zeros((len(a), len(b)), dtype=bool)
    order_a, order_b = np.argsort(ink_a, kind="stable"), np.argsort(ink_b, kind="stable")
    sorted_b = ink_b[order_b]
    low, high = (1 - tolerance) / (1 + tolerance) * 0.99, (1 + tolerance) / (1 - tolerance) * 1.01
    for start in range(0, len(a), block):
        rows = order_a[start:start + block]
        first = np.searchsorted(sorted_b, ink_a[rows].min() * low, side="left")
        last = np.searchsorted(sorted_b, ink_a[rows].max() * high, side="right")
        cols = order_b[first:last]
        if not len(cols):
            continue
        diff = np.abs(a[rows, None, :] - b[None, cols, :]).sum(axis=-1)
        out[np.ix_(rows, cols)] = diff < tolerance * (ink_a[rows, None] + ink_b[None, cols])
    return out


def distinct_characters(candidates: str, exclude: str, reference_font: str = "DejaVuSans.ttf",
                        tolerance: float = 0.1, fallback_fonts: tuple[str, ...] = ()) -> str:
    """Drop homoglyphs: candidates that look like a character in ``exclude`` or an earlier one.

    Greek and Cyrillic share many shapes with Latin (A, B, E, ...) and with each other; a
    pre-training class that is a Latin letter in disguise would leak the downstream classes.
    Two characters are the same shape when their renderings in ``reference_font`` differ by
    less than ``tolerance`` (absolute pixel difference over the ink of both renderings).
    A character ``reference_font`` lacks is drawn in the first of ``fallback_fonts`` that has
    it, or dropped when none does. Vectorised: all pairs are compared at once, then the
    candidates are kept in order, each unless it looks like an excluded or a kept one.
    """
    def drawable(chars: str) -> tuple[str, list[str]]:
        kept, fonts = [], []
        for ch in chars:
            font = next((f for f in (reference_font, *fallback_fonts) if has_glyph(f, ch)),
                        None)
            if font is not None:
                kept.append(ch)
                fonts.append(font)
        return "".join(kept), fonts

    chars, fonts = drawable(candidates)
    if not chars:
        return ""
    pixels = shape_pixels(chars, fonts)
    ex_chars, ex_fonts = drawable(exclude)
    blocked = (alike_pairs(pixels, shape_pixels(ex_chars, ex_fonts), tolerance).any(axis=1)
               if ex_chars else np.zeros(len(chars), dtype=bool))
    alike = alike_pairs(pixels, pixels, tolerance)
    kept: list[str] = []
    for i, ch in enumerate(chars):
        if not blocked[i]:
            kept.append(ch)
            blocked |= alike[i]
    return "".join(kept)
