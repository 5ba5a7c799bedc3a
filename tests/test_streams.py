import json

import numpy as np
import pytest
import torch

from clplatform.errors import UserError
from clplatform.data import dataset_tensors
from clplatform import create_stream
from clplatform.streams.common import classes_per_experience
from clplatform.streams.render import LATIN

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


# ------------------------------------------------------------------ seeds
def _cli(*args, env=None):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    return CliRunner(env=env).invoke(cli, [str(a) for a in args], prog_name="clplat")


def _one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clplat: error: "), result.stderr
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("stream, seed, message", [
    ("glyphs", "-1", "invalid value -1 for seed (stream 'glyphs'): must be >= 0"),
    ("glyphs", "4294967296", "invalid value 4294967296 for seed (stream 'glyphs'): must be "
                             "<= 4294967295"),
    ("glyphs-domains", "-1", "invalid value -1 for seed (stream 'glyphs-domains')"),
    ("digits", "-1", "invalid value -1 for seed (stream 'digits'): must be >= 0"),
    ("digits", "4294967296", "invalid value 4294967296 for seed (stream 'digits')"),
    ("folder", "-1", "invalid value -1 for seed (stream 'folder'): must be >= 0"),
    ("avalanche:SplitMNIST", "-1", "invalid value -1 for seed (stream "
                                   "'avalanche:SplitMNIST'): must be >= 0"),
])
def test_stream_seeds_are_validated(stream, seed, message, tmp_path):
    """From the command line and from a TOML file alike: exit 2 before anything is built."""
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    extra = ["--stream-opt", f"root={root}"] if stream in ("folder", "avalanche:SplitMNIST") \
        else []
    _one_line_error(_cli("run", "--dry-run", "--stream", stream, "--stream-opt",
                         f"seed={seed}", *extra, "--out", tmp_path / "runs"), message)
    config = tmp_path / "run.toml"
    config.write_text(f'[stream]\nname = "{stream}"\nseed = {seed}\n'
                      + (f'root = "{root}"\n' if extra else ""))
    _one_line_error(_cli("run", "--dry-run", "--config", config, "--out", tmp_path / "runs"),
                    message)
    assert not (tmp_path / "runs").exists()


def test_the_largest_stream_seed_works():
    bm = create_stream("digits", seed=2**32 - 1)
    assert bm.info.num_classes == 10 and len(bm.train_stream) == 5


# ------------------------------------------------------------------ the cache
NO_BACKBONE = ["--backbone-opt", "pretrained=false", "--stream-opt", "samples_per_class=2",
               "--stream-opt", "test_samples_per_class=1", "--stream-opt", "seed=7"]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip archive", b"\x93NUMPY"])
def test_a_corrupt_stream_cache_file_is_rebuilt(content, tmp_path, monkeypatch):
    """An empty, truncated or foreign file where a stream's cached arrays should be: rebuilt
    with a warning, the run goes on (it used to end as 'interrupted', exit 130)."""
    monkeypatch.setenv("CLPLATFORM_CACHE", str(tmp_path / "cache"))
    first = _cli("run", "--dry-run", *NO_BACKBONE, "--out", tmp_path / "runs")
    assert first.exit_code == 0, first.output
    cached, = (tmp_path / "cache" / "streams").glob("glyphs-*.npz")
    good = cached.read_bytes()
    cached.write_bytes(content)
    again = _cli("run", "--dry-run", *NO_BACKBONE, "--out", tmp_path / "runs")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert f"rebuilding unreadable cache file {cached}" in again.stderr
    assert cached.read_bytes() == good  # the same data, rebuilt and cached again


def test_what_is_not_the_cache_is_refused_up_front(tmp_path, monkeypatch):
    from clplatform.models.pretrain import PretrainRecipe, cached_weights_path
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    monkeypatch.setenv("CLPLATFORM_CACHE", str(blocker))
    _one_line_error(_cli("run", "--dry-run", *NO_BACKBONE, "--out", tmp_path / "runs"),
                    f"cannot use the cache folder {blocker}/streams ($CLPLATFORM_CACHE cache "
                    f"{blocker})")
    assert blocker.read_text() == "mine"
    # a folder where vit-glyphs' weights go (the suite's default backbone): refused before a minute of
    # pre-training, and left alone
    monkeypatch.setenv("CLPLATFORM_CACHE", str(tmp_path / "cache"))
    weights = cached_weights_path(PretrainRecipe())
    (weights / "keep").mkdir(parents=True)
    for args in (["run", "--dry-run", "--stream", "digits"], ["pretrain"]):
        result = _cli(*args, "--out", tmp_path / "out")
        _one_line_error(result, f"{weights} is in the way of a cache file (it is not a file)")
        assert "building the backbone" not in result.stderr
    assert (weights / "keep").is_dir()


def test_a_cache_that_cannot_be_written_costs_only_a_warning(tmp_path, monkeypatch, capsys):
    import errno
    monkeypatch.setenv("CLPLATFORM_CACHE", str(tmp_path / "cache"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", disk_full)
    bm = create_stream("glyphs", **SMALL, seed=12, experiences=2)
    assert bm.info.num_classes == 62 and len(bm.train_stream) == 2
    assert "cannot write cache file" in capsys.readouterr().err
    assert not list((tmp_path / "cache" / "streams").iterdir())  # no partial file left
