"""The downstream streams of the miniature world (issue 20): mini-in, mini-r, mini-a,
mini-vtab. Small counts: each test renders a few hundred images."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clplatform.errors import UserError
from clplatform.streams import StreamSource, mini
from clplatform.streams.render import LATIN, distinct_characters
from clplatform.streams.styles import STYLES

SMALL = {"samples_per_class": 10, "test_samples_per_class": 10}


def _build(name: str, seed: int = 0, **options):
    return StreamSource(name, {**SMALL, **options}).build(seed)


def _arrays(experiences) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for experience in experiences:
        data = experience.dataset
        xs.append(torch.stack([data[i][0] for i in range(len(data))]))
        ys.append(torch.as_tensor(list(data.targets)))
    return torch.cat(xs), torch.cat(ys)


def test_downstream_classes_have_no_look_alikes():
    classes = mini.downstream_characters()
    assert 45 <= len(classes) <= 50 and set(classes) <= set(LATIN)
    for font in mini.LOOK_ALIKE_FONTS:  # the renderer's own test agrees in every face
        assert distinct_characters(classes, "", font) == classes
    # the groups keep one member each (o and 0 differ in size and width)
    for group in ("0O", "Oo", "lI1", "cC", "sS", "xX", "vV", "wW", "zZ"):
        assert sum(c in classes for c in group) == 1, group
    # and it is a real filter: distinct letters of one case survive
    assert {"A", "B", "a", "b", "k", "K"} <= set(classes)


def test_the_options_default_to_the_world_design():
    opts = mini.MiniOptions()
    assert (opts.experiences, opts.samples_per_class, opts.test_samples_per_class) == (10, 200,
                                                                                       50)
    experiences = next(f for f in dataclasses.fields(mini.MiniOptions) if f.name == "experiences")
    assert experiences.metadata["max"] == len(mini.downstream_characters())
    vtab = mini.MiniVTABOptions()
    assert vtab.sources == ("letters", "digits", "shapes", "textures", "fractals")
    assert (vtab.samples_per_class, vtab.test_samples_per_class) == (200, 50)


@pytest.mark.parametrize("name", ["mini-in", "mini-r", "mini-a"])
def test_class_incremental_streams_shapes_counts_and_ink(name):
    bm = _build(name)
    classes = mini.downstream_characters()
    assert bm.info.name == name and sorted(bm.info.classes) == sorted(classes)
    assert len(bm.train_stream) == len(bm.test_stream) == 10
    sizes = [len(e.classes_in_this_experience) for e in bm.train_stream]
    assert sizes == [5] * 6 + [4] * 4  # 46 classes over 10 experiences
    x, y = _arrays(bm.train_stream)
    xt, yt = _arrays(bm.test_stream)
    assert x.shape == (46 * 10, 1, 32, 32) and xt.shape == (46 * 10, 1, 32, 32)
    assert torch.bincount(y).tolist() == [10] * 46 and torch.bincount(yt).tolist() == [10] * 46
    # not blank: every image has contrast (ink against background)
    spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    assert spread.min() > 0.2
    # and the classes are not all the same picture: class means differ
    means = torch.stack([x[y == c].mean(0) for c in range(46)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(9).min() > 0.5


@pytest.mark.parametrize("name", ["mini-r", "mini-a"])
def test_same_seed_same_bytes_other_seed_other_images(name, tmp_path, monkeypatch):
    images = []
    for cache, seed in (("a", 3), ("b", 3), ("c", 4)):
        monkeypatch.setenv("CLPLATFORM_CACHE", str(tmp_path / cache))  # rendered afresh
        images.append(_arrays(_build(name, seed, samples_per_class=4,
                                     test_samples_per_class=2).train_stream)[0])
    assert torch.equal(images[0], images[1])
    assert not torch.equal(images[0], images[2])


def test_every_style_changes_the_glyph_its_own_way():
    from clplatform.streams.render import render
    rng = np.random.default_rng(0)
    glyph = render("R", "DejaVuSans.ttf", rng, mini.CANVAS).astype(np.float32) / 255
    drawn = {name: style(glyph, np.random.default_rng(1)) for name, style in STYLES.items()}
    assert len(drawn) >= 8
    for name, img in drawn.items():
        assert img.shape == glyph.shape and img.min() >= 0 and img.max() <= 1, name
        assert np.abs(img - glyph).sum() > 0.3 * glyph.sum(), name  # not the pre-training look
    names = list(drawn)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(drawn[a] - drawn[b]).sum() > 0.3 * glyph.sum(), (a, b)
    # a few signatures: dark ink on light paper, the outline is hollow, blocks are blocky
    assert drawn["inverted"][0, 0] > 0.6 and drawn["inverted"].min() < 0.4
    assert drawn["outline"][glyph > 0.99].mean() < glyph[glyph > 0.99].mean() - 0.3
    assert len(np.unique(drawn["pixelated"])) == 2


def test_every_mini_r_style_is_in_train_and_test():
    bm = _build("mini-r")
    for stream in (bm.train_stream, bm.test_stream):
        x, y = _arrays(stream)
        for c in range(3):
            own = x[y == c, 0]                  # the class's images, k = 0..9 in order
            corners = own[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean(1)
            styles = [mini.style_of(k) for k in range(len(own))]
            assert sorted(styles) == sorted(STYLES)  # each style once per class
            light = [s for s, v in zip(styles, corners) if v > 0.6]
            assert light == ["inverted"]      # light paper: exactly the inverted image
            noisy = own[styles.index("noise")]
            assert noisy[:4, :4].std() > 0.1  # grain over the background too


def test_mini_a_keeps_the_target_identifiable():
    from clplatform.streams.glyphs import _greek_cyrillic
    corpus = _greek_cyrillic()
    corpus_fonts = mini._fonts(corpus)
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(mini.HARD_FACTORS, 0)
    for k in range(160):
        char = mini.downstream_characters()[k % 46]
        layers = mini._hard_layers(char, mini._fonts(char)[0][0], corpus, corpus_fonts, rng)
        visible = (layers.target * (1 - layers.occluded)).sum()
        assert visible >= mini.VISIBLE_INK * layers.target_ink
        own = layers.target > 0.3
        extra = (layers.ink > 0.3) & ~own            # distractor ink ...
        near = own.copy()
        for axis in (0, 1):
            for shift in (-1, 1):
                near |= np.roll(own, shift, axis)
        assert (extra & near).sum() <= mini.DISTRACTOR_COVER * own.sum()  # ... stays clear
        contrast = abs(layers.foreground - layers.background)
        assert contrast >= mini.MIN_CONTRAST - 1e-9
        # one or two hard factors, each visible in the layers, the rest as mini-in draws
        assert 1 <= len(layers.factors) <= 2
        assert ("clutter" in layers.factors) == bool(extra.any())
        assert ("low contrast" in layers.factors) == (contrast < 0.5)
        if "occlusion" not in layers.factors:
            assert not layers.occluded.any()
        for factor in layers.factors:
            counts[factor] += 1
    assert all(35 < n < 85 for n in counts.values()), counts  # each on ~3/8 of the images
    # the image: ink and background as the layers say
    img = layers.image()
    assert np.isclose(img[~layers.occluded.astype(bool) & (layers.ink == 0)],
                      layers.background).all()


def test_mini_vtab_one_source_per_experience():
    bm = _build("mini-vtab")
    assert len(bm.train_stream) == len(bm.test_stream) == 5
    names = bm.info.classes
    assert len(names) == 50
    for k, (source, train, test) in enumerate(zip(mini.VTAB_SOURCES, bm.train_stream,
                                                  bm.test_stream)):
        for experience in (train, test):
            classes = experience.classes_in_this_experience
            assert len(classes) == 10
            assert {names[c].split(":")[0] for c in classes} == {source}, k
    x, y = _arrays(bm.train_stream)
    spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    assert spread.min() > 0.2
    # load_digits: all 1,797 real digits, split 70/30 per class
    digits_train = sum(int((y == c).sum()) for c in bm.train_stream[1].classes_in_this_experience)
    digits_test = len(bm.test_stream[1].dataset)
    assert digits_train + digits_test == 1797 and abs(digits_test - 0.3 * 1797) < 2
    letters = [names[c].split(":")[1] for c in bm.train_stream[0].classes_in_this_experience]
    assert set(letters) <= set(mini.downstream_characters()) and all(
        c.isalpha() for c in letters)


def test_mini_vtab_digits_are_the_real_sklearn_digits():
    from sklearn.datasets import load_digits
    _, ((x, y), (xt, yt)) = mini._vtab_source("digits", 1, 1, seed=0)
    x8 = torch.nn.functional.avg_pool2d(x, 4)[:, 0]  # back to 8x8
    data = load_digits()
    first = torch.from_numpy(data.images).float() / 16
    # every training image is one of the bundled digits with its label
    hits = torch.cdist(x8[:20].flatten(1), first.flatten(1)).argmin(1)
    assert data.target[hits.numpy()].tolist() == y[:20].tolist()


def test_mini_vtab_sources_follow_the_option():
    bm = _build("mini-vtab", sources="shapes,textures")
    assert [bm.info.classes[min(bm.train_stream[k].classes_in_this_experience)].split(":")[0]
            for k in range(2)] == ["shapes", "textures"]
    with pytest.raises(UserError, match="must not repeat"):
        _build("mini-vtab", sources="shapes,shapes")
    with pytest.raises(UserError):
        _build("mini-vtab", sources="photos")


def test_mini_vtab_fractals_come_from_the_downstream_seed_space():
    from clplatform.streams import fractals
    down = mini.downstream_fractals()
    assert all(c.seed[0] == fractals.NAMESPACES["downstream"] for c in down)
    # no pre-training draw (any index up to the downstream's last, and beyond) is one of them
    last = max(c.seed[2] for c in down)
    for index in range(last + 200):
        maps, _ = fractals._draw(np.random.default_rng((fractals.NAMESPACES["pretrain"], 0,
                                                        index)))
        assert not any(m.shape == maps.shape and np.allclose(m, maps) for m in
                       (c.maps for c in down))
    _, ((x, y), _) = mini._vtab_source("fractals", 2, 1, seed=0)
    expect, _ = fractals.render_fractal_set(down, 2, 32, 0, 0)
    assert torch.equal(x[:, 0], torch.from_numpy(expect).float() / 255)
