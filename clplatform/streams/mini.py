"""The downstream streams of the miniature world: ``mini-in``, ``mini-r``, ``mini-a``,
``mini-vtab`` (issue 20), each standing for one benchmark of the PTM-based continual-learning
papers (the mapping reports rank them by: ``clplatform.reports.published.STAND_INS``).

The world mirrors the papers' regime: a backbone pre-trained on a large corpus (``vit-mini``
on ``mini-pretrain``: the symbols of matplotlib's DejaVu and STIX fonts that are not Latin
letters, digits or their look-alikes, plus fractal images; geometric jitter is its only
augmentation) is fine-tuned class-incrementally on downstream classes it has never seen.
The downstream classes are the Latin letters and digits with look-alike groups removed
(:func:`downstream_characters`: o/O/0, l/I/1, c/C, s/S, x/X, ... keep one each), so a head
trained on one experience never has to tell apart two classes that look the same.

Roles and recipes (32x32 grey images, uint8; glyphs drawn on a 64x64 canvas first):

- ``mini-in`` (CIFAR-100's role: downstream classes drawn like the pre-training data). Each
  image is a downstream character in one of the pre-training fonts (DejaVu Sans/Serif/Mono,
  STIX; fonts cycled per class) under the renderer's affine jitter: exactly the pre-training
  look, new classes. 10 experiences.
- ``mini-r`` (ImageNet-R's role: renditions). The same classes, each image re-drawn in one of
  ten styles (:mod:`clplatform.streams.styles`: outline, texture fill, heavy noise, wave
  distortion, shaky pen centre line, inverted contrast, stipple, pixelation, extruded
  shadow, spray paint), none of which pre-training ever shows. Sample k of a class is drawn
  in style k mod 10, in train and in test alike: like ImageNet-R's random split, both hold
  every style of every class. 10 experiences.
- ``mini-a`` (ImageNet-A's role: natural adversarial examples). ImageNet-A keeps the real
  photos a ResNet-50 gets wrong, and they are wrong for known reasons: clutter, unusual
  context, occlusion, odd scale and pose, weak cues; a photo usually shows one or two of
  them. Each ``mini-a`` image stages such reasons on purpose: it draws one or two
  (``max_factors``, default 2) of four hard factors, the rest as ``mini-in`` draws it:
  strong pose (rotation up to 45 degrees, scale 0.6-1.3, anywhere on the canvas, possibly
  cut by its edge), clutter (1-3 smaller symbols of the pre-training corpus around the
  target: Greek/Cyrillic, never Latin look-alikes), occlusion (a bar or blob over it), low
  contrast (a grey palette). The stream is not filtered with a model: a filter would make
  the data depend on one backbone's weights (the one under test, or one more to ship) and
  select for that model's quirks, whereas the causes are generated directly here. The class
  stays identifiable by a human, ensured per image: at least 60 % of the target's ink (as
  drawn at its pose, uncut) stays visible after the canvas edge and the occluder;
  distractors cover at most 10 % of its ink and a 3-pixel margin around it; ink and
  background differ by at least 25 % of the grey range. 10 experiences. (Measured: with
  strong pose and clutter on every image plus occlusion and low contrast on half, a
  linear probe on the frozen pre-trained ``vit-glyphs`` reached 5.3 %, chance 2.2 %.)
- ``mini-vtab`` (VTAB's role: sources of different origin, one per experience, 10 classes
  each, in this fixed order): ``letters`` (the first ten letters of the downstream classes,
  drawn as in ``mini-in``), ``digits`` (scikit-learn's real 8x8 handwritten digits,
  upsampled bilinearly to 32x32; ~70/30 stratified seeded split: about 125 training and 54
  test images per class), ``shapes`` (ten filled geometric shapes at a random size, position,
  rotation and grey level), ``textures`` (ten periodic or random patterns at a random angle,
  scale, phase and contrast), ``fractals`` (ten iterated-function-system categories of
  :mod:`clplatform.streams.fractals`' "downstream" namespace, a seed space disjoint from
  pre-training's). 5 experiences.

Every stream is deterministic per seed, offline and cached on disk (:func:`cached_arrays`);
the class order within the stream (within each source for ``mini-vtab``) is seeded as
``glyphs``' is. Defaults: 200 training and 50 test images per class.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from clplatform.options import opt
from clplatform.registry import register_stream

from .common import (StreamInfo, cached_train_test, check_distinct, class_incremental,
                     seed_option, seeded_permutation, train_test_tensors)
from .render import (FONT_FAMILIES, LATIN, RENDER_VERSION, alike_pairs, base_glyph, shape_pixels,
                     fonts_for, render)

MINI_VERSION = 1  # bump when any mini stream's drawing changes: part of every cache key

#: the font families pre-training draws with (Computer Modern: Latin only, not used there)
FAMILIES = tuple(f for f in FONT_FAMILIES if f != "cm")
#: the regular face of each of them: two characters are look-alikes when they are in any
LOOK_ALIKE_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf")
LOOK_ALIKE_TOLERANCE = 0.2

SIZE, CANVAS = 32, 64
VTAB_SOURCES = ("letters", "digits", "shapes", "textures", "fractals")


@lru_cache(maxsize=None)
def downstream_characters() -> str:
    """The Latin letters and digits with look-alikes removed (46 classes).

    :func:`~clplatform.streams.render.distinct_characters` compares glyphs at their natural
    size, so it keeps c/C, s/S, x/X: under the renderer's scale jitter and across fonts those
    differ only in size, and a head trained one experience at a time, with the two in
    different experiences, never learns to tell them apart. Here the comparison is
    the same (absolute difference under ``LOOK_ALIKE_TOLERANCE`` of the ink of both) on each
    glyph's shape at a common size, in each pre-training family's regular face; a character
    alike in any of them to one kept earlier (digits, then capitals, then small letters) is
    dropped.
    """
    shapes = [shape_pixels(LATIN, [f] * len(LATIN), any_size=True) for f in LOOK_ALIKE_FONTS]
    kept: list[int] = []
    for i in range(len(LATIN)):
        if not any(alike_pairs(s[i:i + 1], s[kept], LOOK_ALIKE_TOLERANCE).any() for s in shapes):
            kept.append(i)
    return "".join(LATIN[i] for i in kept)


def _fonts(chars: str) -> list[list[str]]:
    return [fonts_for(c, FAMILIES) for c in chars]


def _shrink(canvas: np.ndarray) -> np.ndarray:
    """A float canvas in [0, 1] (64x64) -> uint8 SIZE x SIZE (box filter)."""
    img = Image.fromarray(np.clip(canvas, 0, 1).astype(np.float32), "F")
    small = np.asarray(img.resize((SIZE, SIZE), Image.BOX))
    return np.rint(small * 255).astype(np.uint8)


def _draw_set(classes: int, per_class: int, seed: int, salt: int,
              draw: Callable[[int, int, np.random.Generator], np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
    """``draw(label, k, rng)`` for k < per_class of every class: (uint8 [N, S, S], labels)."""
    images = np.empty((classes * per_class, SIZE, SIZE), dtype=np.uint8)
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    for label in range(classes):
        rng = np.random.default_rng([seed, salt, label])
        for k in range(per_class):
            images[label * per_class + k] = draw(label, k, rng)
    return images, labels


def _cached_sets(kind: str, key: dict, classes: int, per_class: int, test_per_class: int,
                 seed: int, draw) -> dict[str, np.ndarray]:
    key = {"v": MINI_VERSION, "render": RENDER_VERSION, "n": per_class,
           "n_test": test_per_class, "seed": seed, **key}

    return cached_train_test(kind, key, lambda n, salt: _draw_set(classes, n, seed, salt, draw),
                             per_class, test_per_class)


# ----------------------------------------------------------------------------- options
@dataclass
class MiniOptions:
    experiences: int = opt(10, "number of experiences (classes split as evenly as possible)",
                           min=1, max=46)
    samples_per_class: int = opt(200, "training images per class", min=1, max=10000)
    test_samples_per_class: int = opt(50, "test images per class", min=1, max=10000)
    seed: Optional[int] = seed_option()


def _class_incremental(name: str, chars: str, train, test, opts: MiniOptions):
    info = StreamInfo(name, "class-incremental", list(chars), (1, SIZE, SIZE))
    return class_incremental(train, test, seeded_permutation(len(chars), opts.seed),
                             opts.experiences, info)


# ----------------------------------------------------------------------------- mini-in
@register_stream("mini-in", options=MiniOptions,
                 help="in-distribution (CIFAR-100's role): 46 distinct Latin letters/digits "
                      "drawn like pre-training, 10 experiences, 32x32")
def mini_in(opts: MiniOptions):
    from .glyphs import _rendered
    chars = downstream_characters()
    train, test = _rendered(chars, FAMILIES, opts.samples_per_class,
                            opts.test_samples_per_class, SIZE, 1.0, opts.seed)
    return _class_incremental("mini-in", chars, train, test, opts)


def _drawn_stream(name: str, opts: MiniOptions, key: dict, canvas) -> object:
    """A class-incremental stream of the downstream characters, image k of a class drawn
    by ``canvas(char, font, k, rng)`` (a float 64x64 canvas), fonts cycled per class in a
    seeded order (as :func:`render.render_set` does)."""
    chars = downstream_characters()
    fonts = _fonts(chars)
    order: list = []

    def draw(label, k, rng):
        if k == 0:
            order[:] = rng.permutation(len(fonts[label]))
        font = fonts[label][order[k % len(fonts[label])]]
        return _shrink(canvas(chars[label], font, k, rng))
    arrays = _cached_sets(name, {"chars": chars, "fonts": fonts, **key}, len(chars),
                          opts.samples_per_class, opts.test_samples_per_class, opts.seed, draw)
    return _class_incremental(name, chars, *train_test_tensors(arrays), opts)


def _canvas_glyph(char: str, font: str, rng: np.random.Generator) -> np.ndarray:
    """``char`` in ``font`` under the renderer's jitter, ink in [0, 1] on the 64x64 canvas."""
    return render(char, font, rng, CANVAS).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- mini-r
def style_of(k: int) -> str:
    """The style of a ``mini-r`` class's k-th image, in the training and the test set."""
    from .styles import STYLES
    return list(STYLES)[k % len(STYLES)]


@register_stream("mini-r", options=MiniOptions,
                 help="renditions (ImageNet-R's role): the 46 mini-in classes in 10 drawing "
                      "styles absent from pre-training, 10 experiences, 32x32")
def mini_r(opts: MiniOptions):
    from .styles import STYLES

    def canvas(char, font, k, rng):
        return STYLES[style_of(k)](_canvas_glyph(char, font, rng), rng)
    return _drawn_stream("mini-r", opts, {"styles": list(STYLES)}, canvas)


# ----------------------------------------------------------------------------- mini-a
VISIBLE_INK = 0.6        # the target keeps at least this share of its ink visible
DISTRACTOR_COVER = 0.1   # distractors cover at most this share of the target's ink
MIN_CONTRAST = 0.25      # ink and background differ by at least this share of the grey range


def _posed(char: str, font: str, angle: float, scale: float, shift: np.ndarray) -> np.ndarray:
    """``char`` rotated by ``angle`` degrees and scaled about the canvas centre, then moved
    by ``shift`` pixels (x, y): ink in [0, 1] on the canvas (cut at its edge)."""
    theta = np.radians(angle)
    cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
    centre = CANVAS / 2
    # output -> input: x_in = R(-angle) / scale @ (x_out - centre - shift) + centre
    dx, dy = centre + shift[0], centre + shift[1]
    coeffs = (cos, sin, centre - cos * dx - sin * dy, -sin, cos, centre + sin * dx - cos * dy)
    img = base_glyph(char, font).transform((CANVAS, CANVAS), Image.AFFINE, coeffs,
                                           resample=Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _occluder(rng: np.random.Generator) -> np.ndarray:
    """A bar across the canvas or a blob: a mask in {0, 1}."""
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    if rng.uniform() < 0.5:
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(16, 48, size=2)
        dx, dy = 64 * np.cos(angle), 64 * np.sin(angle)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255,
                  width=int(rng.integers(5, 10)))
    else:
        cx, cy = rng.uniform(8, 56, size=2)
        rx, ry = rng.uniform(6, 13, size=2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


class HardLayers(NamedTuple):
    """The parts of one ``mini-a`` canvas, kept apart so the guarantees can be checked."""
    target: np.ndarray      # the target's ink at its pose, cut by the canvas edge
    target_ink: float       # the ink the target has at its pose, uncut
    ink: np.ndarray         # target and distractors
    occluded: np.ndarray    # the occluder's mask
    background: float
    foreground: float
    cover: float            # the occluder's grey
    factors: tuple[str, ...]  # the hard factors drawn

    def image(self) -> np.ndarray:
        drawn = self.background + (self.foreground - self.background) * self.ink
        return drawn * (1 - self.occluded) + self.cover * self.occluded


HARD_FACTORS = ("pose", "clutter", "occlusion", "low contrast")


def _hard_layers(char: str, font: str, corpus: str, corpus_fonts: list[list[str]],
                 rng: np.random.Generator, max_factors: int = 2) -> HardLayers:
    """One ``mini-a`` canvas (see the module's docstring for the recipe and its guarantees):
    1 to ``max_factors`` of :data:`HARD_FACTORS`, the rest drawn as ``mini-in`` draws."""
    factors = set(rng.choice(HARD_FACTORS, size=int(rng.integers(1, max_factors + 1)),
                             replace=False).tolist())
    full_ink = np.asarray(base_glyph(char, font), dtype=np.float32).sum() / 255.0
    scale, target = 1.0, None
    for _ in range(50 if "pose" in factors else 0):  # strong, but VISIBLE_INK on the canvas
        angle, scale = rng.uniform(-45, 45), rng.uniform(0.6, 1.3)
        target = _posed(char, font, angle, scale, rng.uniform(-18, 18, size=2))
        if target.sum() >= VISIBLE_INK * full_ink * scale ** 2:
            break
    else:  # the renderer's mild jitter, as in mini-in (and pre-training)
        target = _canvas_glyph(char, font, rng)
        scale, full_ink = 1.0, float(target.sum())
    visible_ink = VISIBLE_INK * full_ink * scale ** 2
    own = target > 0.3
    near = ndimage.binary_dilation(own, iterations=3)  # the target's ink and a margin
    ink, clutter = target.copy(), np.zeros_like(own)
    for _ in range(int(rng.integers(1, 4)) if "clutter" in factors else 0):
        j = int(rng.integers(len(corpus)))  # a symbol of the pre-training corpus
        font_j = corpus_fonts[j][int(rng.integers(len(corpus_fonts[j])))]
        for _ in range(10):
            other = _posed(corpus[j], font_j, rng.uniform(-45, 45), rng.uniform(0.35, 0.75),
                           rng.uniform(-24, 24, size=2))
            if ((clutter | (other > 0.3)) & near).sum() <= DISTRACTOR_COVER * own.sum():
                ink, clutter = np.maximum(ink, other), clutter | (other > 0.3)
                break
    occluded = np.zeros_like(ink)
    for _ in range(10 if "occlusion" in factors else 0):
        mask = _occluder(rng)
        if (target * (1 - mask)).sum() >= visible_ink:
            occluded = mask
            break
    if "low contrast" in factors:
        background = rng.uniform(0.0, 0.5)
        foreground = background + rng.choice((-1, 1)) * rng.uniform(MIN_CONTRAST, 0.4)
        if not 0 <= foreground <= 1:
            foreground = background + abs(foreground - background)
    else:
        background, foreground = 0.0, 1.0
    cover = background + rng.uniform(0.3, 0.7) * (foreground - background)
    return HardLayers(target, full_ink * scale ** 2, ink, occluded, background, foreground,
                      cover, tuple(f for f in HARD_FACTORS if f in factors))


@dataclass
class MiniAOptions(MiniOptions):
    max_factors: int = opt(2, "hard factors per image at most: each image draws 1 to this "
                              "many of strong pose, clutter, occlusion, low contrast", min=1,
                           max=4)


@register_stream("mini-a", options=MiniAOptions,
                 help="hard shift (ImageNet-A's role): the 46 mini-in classes among clutter, "
                      "occluders, strong poses and low contrast, 10 experiences, 32x32")
def mini_a(opts: MiniAOptions):
    from .glyphs import _greek_cyrillic
    corpus = _greek_cyrillic()
    corpus_fonts = _fonts(corpus)

    def canvas(char, font, k, rng):
        return _hard_layers(char, font, corpus, corpus_fonts, rng, opts.max_factors).image()
    return _drawn_stream("mini-a", opts, {"corpus": corpus, "factors": opts.max_factors},
                         canvas)


# ----------------------------------------------------------------------------- mini-vtab
def _polygon(name: str) -> list[list[tuple[float, float]]]:
    """Outlines of a shape in unit coordinates (radius about 1): the first is filled, the
    others are cut out of it."""
    def circle(r=1.0, cx=0.0, n=48):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return list(zip(cx + r * np.cos(t), r * np.sin(t)))

    def regular(n, r=1.0, start=np.pi / 2):
        t = start + np.linspace(0, 2 * np.pi, n, endpoint=False)
        return list(zip(r * np.cos(t), r * np.sin(t)))
    if name == "circle":
        return [circle()]
    if name == "square":
        return [regular(4, 1.0, np.pi / 4)]
    if name == "triangle":
        return [regular(3)]
    if name == "hexagon":
        return [regular(6)]
    if name == "star":
        t = np.pi / 2 + np.linspace(0, 2 * np.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [list(zip(r * np.cos(t), r * np.sin(t)))]
    if name == "cross":
        w = 0.33
        return [[(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
                 (-w, w), (-1, w), (-1, -w), (-w, -w)]]
    if name == "ring":
        return [circle(), circle(0.6)]
    if name == "crescent":
        return [circle(), circle(0.85, 0.45)]
    if name == "arrow":
        return [[(-1, -0.3), (0.1, -0.3), (0.1, -0.75), (1, 0), (0.1, 0.75), (0.1, 0.3),
                 (-1, 0.3)]]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [list(zip(x / 17, (y + 2) / 17))]
    raise ValueError(name)


SHAPES = ("circle", "square", "triangle", "hexagon", "star", "cross", "ring", "crescent",
          "arrow", "heart")


def _shape_image(name: str, rng: np.random.Generator) -> np.ndarray:
    """``name`` filled at a random size, rotation, position and grey level (64x64 canvas)."""
    radius = rng.uniform(10, 26)
    angle = rng.uniform(0, 2 * np.pi)
    centre = rng.uniform(radius + 3, CANVAS - radius - 3, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    background = rng.uniform(0, 0.25)
    img = Image.new("F", (CANVAS, CANVAS), background)
    draw = ImageDraw.Draw(img)
    for i, outline in enumerate(_polygon(name)):
        points = np.asarray(outline) @ rot.T * radius + centre
        draw.polygon([tuple(p) for p in points],
                     fill=rng.uniform(0.6, 1.0) if i == 0 else background)
    return np.asarray(img, dtype=np.float32)


TEXTURES = ("stripes", "checkerboard", "dots", "waves", "blobs", "rings", "grid", "bricks",
            "sunburst", "speckle")


def _texture_image(name: str, rng: np.random.Generator) -> np.ndarray:
    """``name`` at a random angle, period, phase and contrast (64x64 canvas)."""
    y, x = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    period = rng.uniform(8, 16)
    pu, pv = (u / period + rng.uniform()) % 1, (v / period + rng.uniform()) % 1
    cx, cy = rng.uniform(0, CANVAS, size=2)
    if name == "stripes":
        ink = pu < 0.5
    elif name == "checkerboard":
        ink = (pu < 0.5) ^ (pv < 0.5)
    elif name == "dots":
        ink = (pu - 0.5) ** 2 + (pv - 0.5) ** 2 < 0.08
    elif name == "waves":
        ink = ((v / period + 0.25 * np.sin(2 * np.pi * u / (2 * period)) + rng.uniform()) % 1
               ) < 0.3
    elif name == "blobs":
        field = ndimage.gaussian_filter(rng.normal(size=(CANVAS, CANVAS)), period / 3)
        ink = field > np.median(field)
    elif name == "rings":
        ink = ((np.hypot(x - cx, y - cy) / period + rng.uniform()) % 1) < 0.5
    elif name == "grid":
        ink = (pu < 0.2) | (pv < 0.2)
    elif name == "bricks":
        row = np.floor(v / period * 2)
        ink = (((v / period * 2) % 1) < 0.2) | ((((u / period) + row / 2) % 1) < 0.12)
    elif name == "sunburst":
        rays = int(rng.integers(6, 14))
        ink = ((np.arctan2(y - cy, x - cx) * rays / (2 * np.pi) + rng.uniform()) % 1) < 0.5
    elif name == "speckle":
        ink = np.kron(rng.uniform(size=(SIZE, SIZE)) < rng.uniform(0.1, 0.2),
                      np.ones((2, 2), bool))
    else:
        raise ValueError(name)
    low, high = rng.uniform(0, 0.3), rng.uniform(0.6, 1.0)
    return np.where(ink, high, low).astype(np.float32)


@lru_cache(maxsize=None)
def downstream_fractals():
    """``mini-vtab``'s ten fractal categories: the first ten of the "downstream" seed space
    (seed 0), disjoint from pre-training's "pretrain" space by construction."""
    from .fractals import fractal_categories
    return fractal_categories(10, "downstream")


def _vtab_source(source: str, per_class: int, test_per_class: int, seed: int
                 ) -> tuple[list[str], tuple]:
    """The class names and ``((x_train, y_train), (x_test, y_test))`` of one ``mini-vtab``
    source (float images as :func:`to_float_images` makes them)."""
    if source == "letters":
        from .glyphs import _rendered
        chars = "".join(c for c in downstream_characters() if c.isalpha())[:10]
        return list(chars), _rendered(chars, FAMILIES, per_class, test_per_class, SIZE, 1.0,
                                      seed)
    if source == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        data = load_digits()
        big = np.stack([np.asarray(Image.fromarray(img.astype(np.float32) / 16.0, "F")
                                   .resize((SIZE, SIZE), Image.BILINEAR)) for img in data.images])
        x = torch.from_numpy(big.clip(0, 1)).unsqueeze(1)
        y = torch.from_numpy(data.target).long()
        tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=data.target,
                                  random_state=seed)
        return [str(d) for d in range(10)], ((x[tr], y[tr]), (x[te], y[te]))
    if source == "shapes":
        names, make = SHAPES, _shape_image
    elif source == "textures":
        names, make = TEXTURES, _texture_image
    else:  # fractals: fixed categories (seed 0 of the "downstream" space), seeded instances
        from .fractals import render_fractal_set
        key = {"v": MINI_VERSION, "namespace": "downstream", "categories": 10,
               "n": per_class, "n_test": test_per_class, "seed": seed}
        return ([f"fractal-{i}" for i in range(10)], train_test_tensors(cached_train_test(
            "mini-vtab-fractals", key,
            lambda n, salt: render_fractal_set(downstream_fractals(), n, SIZE, seed, salt),
            per_class, test_per_class)))
    arrays = _cached_sets(f"mini-vtab-{source}", {"classes": list(names)}, 10, per_class,
                          test_per_class, seed,
                          lambda label, k, rng: _shrink(make(names[label], rng)))
    return list(names), train_test_tensors(arrays)


@dataclass
class MiniVTABOptions:
    sources: tuple[str, ...] = opt(VTAB_SOURCES, "sources, one experience of 10 classes each, "
                                   "in this order", choices=VTAB_SOURCES)
    samples_per_class: int = opt(200, "training images per class (digits: its own, about "
                                 "125 per class)", min=1, max=10000)
    test_samples_per_class: int = opt(50, "test images per class (digits: 30 % of each "
                                      "class, about 54)", min=1, max=10000)
    seed: Optional[int] = seed_option("seed of the data, the digits' split and the class "
                                      "order within each source (default: run seed)")

    def validate(self) -> None:
        check_distinct(self.sources, "sources", "mini-vtab")


@register_stream("mini-vtab", options=MiniVTABOptions,
                 help="multi-source (VTAB's role): letters, real handwritten digits, shapes, "
                      "textures, fractals; one experience of 10 classes each, 32x32")
def mini_vtab(opts: MiniVTABOptions):
    names: list[str] = []
    train_x, train_y, test_x, test_y, order = [], [], [], [], []
    for source in opts.sources:
        classes, ((xtr, ytr), (xte, yte)) = _vtab_source(
            source, opts.samples_per_class, opts.test_samples_per_class, opts.seed)
        offset = len(names)
        names += [f"{source}:{c}" for c in classes]
        train_x.append(xtr)
        train_y.append(ytr + offset)
        test_x.append(xte)
        test_y.append(yte + offset)
        order += [offset + i for i in seeded_permutation(len(classes), opts.seed)]
    info = StreamInfo("mini-vtab", "class-incremental", names, (1, SIZE, SIZE))
    return class_incremental((torch.cat(train_x), torch.cat(train_y)),
                             (torch.cat(test_x), torch.cat(test_y)), order,
                             [10] * len(opts.sources), info)
