import numpy as np
import pytest
import torch

from clplatform.errors import UserError
from clplatform.data import dataset_tensors
from clplatform.registry import create_stream
from streams.common import classes_per_experience
from streams.render import LATIN

SMALL = {"samples_per_class": 4, "test_samples_per_class": 2}


def _tensors(stream):
    return [dataset_tensors(exp.dataset) for exp in stream]


def _all(stream):
    parts = _tensors(stream)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@pytest.mark.parametrize("name, options, n_classes, n_exp, shape", [
    ("glyphs", {**SMALL, "seed": 0}, 62, 10, (1, 32, 32)),
    ("glyphs", {**SMALL, "seed": 1, "experiences": 4, "image_size": 24}, 62, 4, (1, 24, 24)),
    ("glyphs-domains", {**SMALL, "seed": 0}, 62, 5, (1, 32, 32)),
    ("glyphs-pretrain", {**SMALL, "seed": 0}, 70, 1, (1, 32, 32)),
    ("digits", {"seed": 0}, 10, 5, (1, 8, 8)),
])
def test_stream_shapes_classes_and_split(name, options, n_classes, n_exp, shape):
    bm = create_stream(name, **options)
    assert len(bm.train_stream) == len(bm.test_stream) == n_exp
    assert bm.info.num_classes == n_classes and len(set(bm.info.classes)) == n_classes
    x_train, y_train = _all(bm.train_stream)
    x_test, y_test = _all(bm.test_stream)
    assert tuple(x_train.shape[1:]) == shape == tuple(bm.info.image_shape)
    assert x_train.dtype == torch.float32 and 0 <= x_train.min() and x_train.max() <= 1
    # every class present in train and test, labels are 0..n-1
    assert set(y_train.tolist()) == set(y_test.tolist()) == set(range(n_classes))
    # train and test share no image
    train_set = {hash(x.numpy().tobytes()) for x in x_train}
    assert not any(hash(x.numpy().tobytes()) in train_set for x in x_test)
    # experiences know their classes
    for exp, (_x, y) in zip(bm.train_stream, _tensors(bm.train_stream)):
        assert set(exp.classes_in_this_experience) == set(y.tolist())


def test_class_incremental_labels_follow_order_of_appearance():
    bm = create_stream("glyphs", **SMALL, seed=3, experiences=10)
    sizes = [len(exp.classes_in_this_experience) for exp in bm.train_stream]
    assert sizes == [7, 7, 6, 6, 6, 6, 6, 6, 6, 6]  # 62 classes, none dropped
    start = 0
    for exp, size in zip(bm.train_stream, sizes):
        assert sorted(exp.classes_in_this_experience) == list(range(start, start + size))
        start += size
    assert sorted(bm.info.classes) == sorted(LATIN)


def test_same_seed_same_data_other_seed_other_order():
    a = create_stream("glyphs", **SMALL, seed=5, experiences=2)
    b = create_stream("glyphs", **SMALL, seed=5, experiences=2)
    c = create_stream("glyphs", **SMALL, seed=6, experiences=2)
    xa, ya = _all(a.train_stream)
    xb, yb = _all(b.train_stream)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.info.classes == b.info.classes != c.info.classes
    xc, _ = _all(c.train_stream)
    assert not torch.equal(xa, xc)


def test_domains_are_font_families_in_the_given_order():
    bm = create_stream("glyphs-domains", **SMALL, seed=0, domains=("mono", "sans"))
    assert bm.info.scenario == "domain-incremental" and bm.info.domains == ["mono", "sans"]
    (x_mono, _), (x_sans, _) = _tensors(bm.train_stream)
    alone = create_stream("glyphs-domains", **SMALL, seed=0, domains=("sans",))
    (x_alone, _), = _tensors(alone.train_stream)
    assert torch.equal(x_sans, x_alone)  # a domain's data do not depend on the others
    assert not torch.equal(x_mono, x_sans)


def test_pretrain_classes_are_not_latin():
    bm = create_stream("glyphs-pretrain", **SMALL, seed=0)
    assert not set(bm.info.classes) & set(LATIN)
    assert not set(bm.info.classes) & set("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧАВЕМНОРСТХаеорсху")  # look-alikes


def test_digits_are_the_real_sklearn_digits():
    from sklearn.datasets import load_digits
    bm = create_stream("digits", seed=0)
    x_train, _ = _all(bm.train_stream)
    x_test, _ = _all(bm.test_stream)
    assert len(x_train) + len(x_test) == len(load_digits().target) == 1797
    assert np.isclose(x_train.max().item(), 1.0)


def test_uneven_split_keeps_every_class():
    assert classes_per_experience(62, 10) == [7, 7] + [6] * 8
    assert sum(classes_per_experience(10, 3)) == 10
    with pytest.raises(UserError, match="between 1 and 10"):
        classes_per_experience(10, 11)


def test_generated_data_are_cached(private_cache):
    create_stream("glyphs", **SMALL, seed=11)
    files = list((private_cache / "streams").glob("glyphs-*.npz"))
    assert files
    before = {f: f.stat().st_mtime_ns for f in files}
    create_stream("glyphs", **SMALL, seed=11)
    assert {f: f.stat().st_mtime_ns for f in files} == before
