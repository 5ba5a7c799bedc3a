"""The pre-training corpus of vit-mini: glyph classes, the vectorised look-alike filter and
the stream mini-pretrain."""
from __future__ import annotations

import unicodedata

import numpy as np

from clplatform.streams.render import LATIN, distinct_characters

# glyphs-pretrain's classes before distinct_characters was vectorised: vit-glyphs' weights
# and every record made with it depend on this exact set and order
GLYPHS_PRETRAIN = ("ΓΔΞΠΣΦΨΩαβγδεζθικλμνξπςτυφχψωГДЖИКЛУФЦЧШЩЪЫЬЭЮЯбвгджзилмнптфцчшщъыьэю"
                   "я")


def test_vectorised_distinct_characters_keeps_glyphs_pretrain():
    from clplatform.streams.glyphs import _greek_cyrillic
    assert _greek_cyrillic() == GLYPHS_PRETRAIN


def test_distinct_characters_drops_lookalikes_in_order():
    # Greek capital alpha = A, omicron = o, Cyrillic а = a: dropped; o then O: O stays
    # (different size), later o-like ο (Greek) dropped as a look-alike of the kept o
    assert distinct_characters("ΑλаΩ", exclude="Aa") == "λΩ"
    assert distinct_characters("oοx", exclude="") == "ox"
    # a character the reference font lacks is drawn in a fallback font, or dropped
    stix_only = next(chr(c) for c in range(0x2A00, 0x2B00)
                     if not _has("DejaVuSans.ttf", chr(c)) and _has("STIXGeneral.ttf", chr(c)))
    assert distinct_characters(stix_only, exclude="") == ""
    assert distinct_characters(stix_only, exclude="", fallback_fonts=("STIXGeneral.ttf",)) \
        == stix_only


def _has(font: str, ch: str) -> bool:
    from clplatform.streams.render import has_glyph
    return has_glyph(font, ch)


def test_corpus_characters_exclude_latin_and_lookalikes():
    from clplatform.streams.corpus import corpus_characters, corpus_fonts
    chars = corpus_characters()
    assert 3000 < len(chars) < 4500
    assert len(set(chars)) == len(chars)
    assert not set(chars) & set(LATIN)
    assert not any(c.isascii() and c.isalnum()
                   for ch in chars for c in unicodedata.normalize("NFKD", ch))
    assert {"é", "Ａ", "²", "①", "ﬁ", "Α", "О", "а"}.isdisjoint(chars)  # Latin-based, alike
    assert {"ᴇ", "ɪ", "в", "∪", "γ"}.isdisjoint(chars)  # look-alikes at another size
    assert {"Ж", "→", "╬", "∑"} <= set(chars)  # other scripts, arrows, box drawing, math
    cats = {unicodedata.category(c)[0] for c in chars}
    assert cats <= set("LMNPS") and {"L", "S"} <= cats
    # every look-alike is gone: filtering again (against Latin and among themselves) keeps all
    sample = chars[::7]
    fonts = corpus_fonts()
    from clplatform.streams.corpus import LOOKALIKE_FONTS, LOOKALIKE_TOLERANCE
    from clplatform.streams.render import lookalikes_at_any_size
    first = [next(f for f in fonts if _has(f, c)) for c in sample]
    assert not lookalikes_at_any_size(sample, first, LATIN, LOOKALIKE_FONTS,
                                      LOOKALIKE_TOLERANCE).any()
    # (the rule finds them: small capitals and C/c-like shapes are alike at any size)
    assert lookalikes_at_any_size("ᴇᴄЖ", ["DejaVuSans.ttf"] * 3, LATIN, LOOKALIKE_FONTS,
                                  LOOKALIKE_TOLERANCE).tolist() == [True, True, False]
    assert distinct_characters(sample, exclude=LATIN, reference_font=fonts[0],
                               fallback_fonts=fonts[1:]) == sample


def test_mini_pretrain_stream_joins_glyphs_and_fractals():
    from clplatform.streams import StreamSource
    from clplatform.streams.corpus import corpus_arrays, corpus_characters
    n_glyphs = len(corpus_characters())
    bm = StreamSource("mini-pretrain", {"samples_per_class": 1, "test_samples_per_class": 1,
                                        "fractals": 2}).build(0)
    assert len(bm.train_stream) == 1
    assert bm.info.num_classes == n_glyphs + 2
    assert bm.info.classes[-2:] == ["fractal:0", "fractal:1"]
    ds = bm.train_stream[0].dataset
    assert sorted(int(t) for t in ds.targets) == list(range(n_glyphs + 2))
    assert tuple(ds[0][0].shape) == (1, 32, 32)
    a, names = corpus_arrays(1, 1, 2, seed=0)
    assert a["x_train"].dtype == np.uint8 and len(a["x_train"]) == n_glyphs + 2
    assert a["y_train"].tolist() == list(range(n_glyphs + 2))
    # every image has ink; the fractal images are the fractals' own (not a glyph)
    assert (a["x_train"].reshape(len(names), -1).max(axis=1) > 100).all()
    only, names_f = corpus_arrays(1, 1, 2, seed=0, glyphs=False)
    np.testing.assert_array_equal(only["x_train"], a["x_train"][-2:])
    assert only["y_train"].tolist() == [0, 1] and names_f == names[-2:]
