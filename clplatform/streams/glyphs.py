"""Offline streams of rendered characters: ``glyphs``, ``glyphs-domains``, ``glyphs-pretrain``.

- ``glyphs``: class-incremental over the 62 Latin letters and digits, all font families mixed.
- ``glyphs-domains``: the same 62 classes, one experience per font family (domain-incremental).
- ``glyphs-pretrain``: Greek and Cyrillic characters that are not Latin look-alikes, for
  pre-training the backbone vit-glyphs (disjoint from the downstream classes).

Data are generated on first use (about a second), deterministic per seed, cached on disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from clplatform.errors import UserError
from clplatform.options import opt
from clplatform.registry import register_stream

from .common import (StreamInfo, cached_train_test, check_distinct, class_incremental,
                     domain_incremental, seed_option, seeded_permutation, train_test_tensors)
from .render import (FONT_FAMILIES, LATIN, RENDER_VERSION, distinct_characters, fonts_for,
                     render_set)



def _greek_cyrillic() -> str:
    greek = [c for c in range(0x391, 0x3AA) if c != 0x3A2] + list(range(0x3B1, 0x3CA))
    cyrillic = list(range(0x410, 0x450))
    return distinct_characters("".join(map(chr, greek + cyrillic)), exclude=LATIN)


def _rendered(chars: str, families: tuple[str, ...], per_class: int, test_per_class: int,
              image_size: int, jitter: float, seed: int
              ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    fonts = [fonts_for(c, families) for c in chars]
    missing = [c for c, f in zip(chars, fonts) if not f]
    if missing:
        raise UserError(f"no font of {', '.join(families)} has {''.join(missing)!r}")
    key = {"v": RENDER_VERSION, "chars": chars, "fonts": fonts, "n": per_class,
           "n_test": test_per_class, "size": image_size, "jitter": jitter, "seed": seed}

    return train_test_tensors(cached_train_test(
        "glyphs", key, lambda n, salt: render_set(chars, fonts, n, image_size, seed, salt, jitter),
        per_class, test_per_class))


@dataclass
class GlyphsOptions:
    experiences: int = opt(10, "number of experiences (classes split as evenly as possible)",
                           min=1, max=62)
    samples_per_class: int = opt(48, "training images per class", min=1, max=10000)
    test_samples_per_class: int = opt(16, "test images per class", min=1, max=10000)
    image_size: int = opt(32, "image side in pixels", min=8, max=64)
    jitter: float = opt(1.0, "strength of the random affine jitter (0 = none)", min=0, max=2)
    seed: Optional[int] = seed_option()


@register_stream("glyphs", options=GlyphsOptions,
                 help="class-incremental, 62 Latin letters/digits rendered in 21 fonts, 32x32")
def glyphs(opts: GlyphsOptions):
    train, test = _rendered(LATIN, tuple(FONT_FAMILIES), opts.samples_per_class,
                            opts.test_samples_per_class, opts.image_size, opts.jitter, opts.seed)
    info = StreamInfo("glyphs", "class-incremental", list(LATIN),
                      (1, opts.image_size, opts.image_size))
    return class_incremental(train, test, seeded_permutation(len(LATIN), opts.seed),
                             opts.experiences, info)


@dataclass
class GlyphsDomainsOptions:
    domains: tuple[str, ...] = opt(tuple(FONT_FAMILIES), "font families, one experience each, "
                                   "in this order", choices=tuple(FONT_FAMILIES))
    samples_per_class: int = opt(24, "training images per class and domain", min=1, max=10000)
    test_samples_per_class: int = opt(8, "test images per class and domain", min=1, max=10000)
    image_size: int = opt(32, "image side in pixels", min=8, max=64)
    jitter: float = opt(1.0, "strength of the random affine jitter (0 = none)", min=0, max=2)
    seed: Optional[int] = seed_option("seed of the data (default: run seed)")

    def validate(self) -> None:
        check_distinct(self.domains, "domains", "glyphs-domains")


@register_stream("glyphs-domains", options=GlyphsDomainsOptions,
                 help="domain-incremental, 62 Latin classes, one experience per font family")
def glyphs_domains(opts: GlyphsDomainsOptions):
    train, test = [], []
    for i, family in enumerate(opts.domains):
        tr, te = _rendered(LATIN, (family,), opts.samples_per_class,
                           opts.test_samples_per_class, opts.image_size, opts.jitter,
                           opts.seed * 1000 + list(FONT_FAMILIES).index(family))
        train.append(tr)
        test.append(te)
    info = StreamInfo("glyphs-domains", "domain-incremental", list(LATIN),
                      (1, opts.image_size, opts.image_size), domains=list(opts.domains))
    return domain_incremental(train, test, info)


@dataclass
class GlyphsPretrainOptions(GlyphsOptions):
    experiences: int = opt(1, "number of experiences", min=1, max=70)
    samples_per_class: int = opt(80, "training images per class", min=1, max=10000)
    test_samples_per_class: int = opt(20, "test images per class", min=1, max=10000)


@register_stream("glyphs-pretrain", options=GlyphsPretrainOptions,
                 help="Greek and Cyrillic characters (no Latin look-alikes), for pre-training")
def glyphs_pretrain(opts: GlyphsPretrainOptions):
    chars = _greek_cyrillic()
    families = tuple(f for f in FONT_FAMILIES if f != "cm")  # Computer Modern: Latin only
    train, test = _rendered(chars, families, opts.samples_per_class,
                            opts.test_samples_per_class, opts.image_size, opts.jitter, opts.seed)
    info = StreamInfo("glyphs-pretrain", "class-incremental", list(chars),
                      (1, opts.image_size, opts.image_size))
    order = seeded_permutation(len(chars), opts.seed) if opts.experiences > 1 else range(len(chars))
    return class_incremental(train, test, order, opts.experiences, info)


from . import corpus  # noqa: E402,F401  (registers mini-pretrain, the corpus of vit-mini)
