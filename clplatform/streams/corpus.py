"""The pre-training corpus of ``vit-mini``: the stream ``mini-pretrain``.

(a) Glyphs: every character of matplotlib's bundled DejaVu and STIX text fonts (the 16 fonts
of :data:`render.FONT_FAMILIES` but Computer Modern, whose symbol fonts map odd code points;
not LastResort: boxes; not STIX's size variants nor its private-use glyphs) that is a letter,
mark, number, punctuation or symbol with enough ink, minus the 62 Latin letters and digits,
every character whose compatibility decomposition holds one of them (accented or styled
Latin: é, ﬁ, Ａ, ², ①, ...), every look-alike of them (at any size, the downstream streams'
rule: ᴇ, ɪ, в, ∪, γ, ...; and at natural size, :func:`render.distinct_characters`), and
look-alikes among themselves (at natural size). Each is rendered in every font that has it with the
renderer's affine jitter (geometric only).
(b) Fractals: FractalDB-style IFS categories of the "pretrain" seed space
(:mod:`streams.fractals`), disjoint from the downstream streams' "downstream" categories.

Classes: the glyphs in code-point order, then the fractals (``fractal:<k>``). Arrays are
uint8, generated once and cached on disk like ``glyphs``.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Optional

import numpy as np

from clplatform.options import opt
from clplatform.registry import register_stream

from .common import (StreamInfo, cached_arrays, cached_train_test, class_incremental,
                     seed_option, train_test_tensors)
from .fractals import FRACTALS_VERSION, fractal_categories, render_fractal_set
from .render import (FONT_FAMILIES, LATIN, RENDER_VERSION, covered_codes, shape_pixels,
                     distinct_characters, fonts_for, lookalikes_at_any_size, render_set)

CORPUS_VERSION = 2        # bump when the choice of characters changes (part of cache keys)
CORPUS_FAMILIES = ("sans", "serif", "mono", "stix")  # DejaVu and STIX: not Computer Modern
MIN_INK = 4.0             # ink of the 16x16 reference rendering (pixel sum / 255): drops
#                           dots, commas, hyphens, accents alone ("." 1.3, "-" 2.0, "~" 4.9)
#: look-alikes of Latin at any size: the downstream streams' rule (a character alike, in
#: shape at a common size, to a Latin letter or digit in any regular face of the families)
LOOKALIKE_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf")
LOOKALIKE_TOLERANCE = 0.2
_CATEGORIES = "LMNPS"     # Unicode general categories: letters, marks, numbers, punct., symbols


def corpus_fonts() -> tuple[str, ...]:
    return tuple(f for fam in CORPUS_FAMILIES for f in FONT_FAMILIES[fam])


def _latin_based(ch: str) -> bool:
    """True when the compatibility decomposition of ``ch`` holds a Latin letter or digit."""
    return any(c.isascii() and c.isalnum() for c in unicodedata.normalize("NFKD", ch))


def corpus_characters() -> str:
    """The glyph classes of ``mini-pretrain`` (3,572; cached: ~15 s to derive)."""
    fonts = corpus_fonts()
    key = {"v": CORPUS_VERSION, "render": RENDER_VERSION, "fonts": fonts, "min_ink": MIN_INK}

    def make() -> dict[str, np.ndarray]:
        codes = sorted(set().union(*(covered_codes(f) for f in fonts)))
        chars = [chr(c) for c in codes
                 if unicodedata.category(chr(c))[0] in _CATEGORIES
                 and unicodedata.category(chr(c)) != "Co" and not _latin_based(chr(c))]
        first_font = [next(f for f in fonts if ord(ch) in covered_codes(f)) for ch in chars]
        ink = shape_pixels("".join(chars), first_font).sum(axis=1)
        inked = [(ch, f) for ch, f, i in zip(chars, first_font, ink) if i >= MIN_INK]
        latin_like = lookalikes_at_any_size("".join(c for c, _ in inked), [f for _, f in inked],
                                            LATIN, LOOKALIKE_FONTS, LOOKALIKE_TOLERANCE)
        unlike = "".join(c for (c, _), alike in zip(inked, latin_like) if not alike)
        kept = distinct_characters(unlike, exclude=LATIN, reference_font=fonts[0],
                                   fallback_fonts=fonts[1:])
        return {"codes": np.array([ord(c) for c in kept], dtype=np.int64)}

    return "".join(map(chr, cached_arrays("mini-pretrain-chars", key, make)["codes"]))


def corpus_arrays(samples_per_class: int, test_samples_per_class: int, fractals: int,
                  image_size: int = 32, seed: int = 0, glyphs: bool = True,
                  glyph_classes: int = 0) -> tuple[dict[str, np.ndarray], list[str]]:
    """uint8 arrays ``x_train, y_train, x_test, y_test`` of the corpus and the class names
    (glyph characters, then ``fractal:<k>``); glyphs and fractals cached separately.
    ``glyph_classes``: 0 every glyph class, k > 0 k of them evenly spaced (tests)."""
    arrays, names, chars = [], [], ""
    if glyphs:
        chars = corpus_characters()
        if glyph_classes:
            chars = "".join(chars[i] for i in np.linspace(0, len(chars) - 1, glyph_classes,
                                                          dtype=int))
        fonts = [fonts_for(c, CORPUS_FAMILIES) for c in chars]
        key = {"v": CORPUS_VERSION, "render": RENDER_VERSION, "chars": chars, "fonts": fonts,
               "n": samples_per_class, "n_test": test_samples_per_class, "size": image_size,
               "seed": seed}

        arrays.append(cached_train_test(
            "mini-pretrain-glyphs", key,
            lambda n, salt: render_set(chars, fonts, n, image_size, seed, salt),
            samples_per_class, test_samples_per_class))
        names += list(chars)
    if fractals:
        key = {"v": FRACTALS_VERSION, "n_cat": fractals, "n": samples_per_class,
               "n_test": test_samples_per_class, "size": image_size, "seed": seed}

        categories: list = []  # searched once, only when the arrays are not cached

        def draw_fractals(n: int, salt: int):
            if not categories:
                categories.extend(fractal_categories(fractals, "pretrain", seed))
            return render_fractal_set(categories, n, image_size, seed, salt)

        arrays.append(cached_train_test("mini-pretrain-fractals", key, draw_fractals,
                                        samples_per_class, test_samples_per_class))
        names += [f"fractal:{k}" for k in range(fractals)]
    offsets = (0, len(chars))  # the fractals' labels follow the glyphs'
    return {k: np.concatenate([a[k] + off if k.startswith("y") else a[k]
                               for a, off in zip(arrays, offsets)])
            for k in ("x_train", "y_train", "x_test", "y_test")}, names


@dataclass
class MiniPretrainOptions:
    samples_per_class: int = opt(20, "training images per class", min=1, max=10000)
    test_samples_per_class: int = opt(5, "test images per class", min=1, max=10000)
    fractals: int = opt(1000, "FractalDB-style fractal categories (the 'pretrain' seed "
                              "space; FractalDB-1k has 1,000)", min=0, max=100000)
    glyphs: bool = opt(True, "include the glyph classes (false: fractals only)")
    image_size: int = opt(32, "image side in pixels", min=8, max=64)
    seed: Optional[int] = seed_option("seed of the rendering and the fractal categories "
                                      "(default: run seed)")

    def validate(self) -> None:
        from clplatform.errors import UserError
        if not self.glyphs and not self.fractals:
            raise UserError("mini-pretrain needs glyphs=true or fractals > 0")


@register_stream("mini-pretrain", options=MiniPretrainOptions,
                 help="pre-training corpus of vit-mini: 3,576 non-Latin glyphs of the DejaVu/"
                      "STIX fonts + FractalDB-style fractals, one experience")
def mini_pretrain(opts: MiniPretrainOptions):
    a, names = corpus_arrays(opts.samples_per_class, opts.test_samples_per_class,
                             opts.fractals, opts.image_size, opts.seed, opts.glyphs)
    info = StreamInfo("mini-pretrain", "class-incremental", names,
                      (1, opts.image_size, opts.image_size))
    return class_incremental(*train_test_tensors(a), range(len(names)), 1, info)
