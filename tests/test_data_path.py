"""The data path of the strategies that train from tensors (issue 19): an experience's images
held as uint8 (ExperienceImages), the random training transform drawn again at every read,
nothing frozen cached over random reads, the evaluator's test stream as uint8."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from clplatform.app.cli import cli
from clplatform.data import ExperienceImages, dataset_tensors, experience_images
from clplatform.streams import StreamSource
from clplatform.strategies.vit import FrozenRows, frozen_rows, map_batches

from fakes.paper_benchmarks import make_fake


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


@pytest.fixture(scope="module")
def imagenet_r(tmp_path_factory):
    """Fake ImageNet-R (200 classes, 2 train + 1 test images each) at 40 x 40 pixels."""
    return make_fake("imagenet-r", tmp_path_factory.mktemp("inr"), size=40)


def build(root, **options):
    options = {"root": str(root), "image_size": "32", "tasks": "10", **options}
    return StreamSource("imagenet-r", options).build(0)


def test_augmented_stream_draws_again_at_every_read(imagenet_r):
    train = build(imagenet_r, transform="pilot").train_stream[0].dataset
    torch.manual_seed(0)
    x, y = experience_images(train)
    assert x.random and x.stored.dtype == torch.uint8
    # the stored copy: the eval resize (short side int(256/224 * 32) = 36) and a 36 x 36 crop
    assert tuple(x.stored.shape) == (len(train), 3, 36, 36) and x.shape[1:] == (3, 32, 32)
    assert torch.equal(y, dataset_tensors(train)[1])
    idx = torch.arange(8)
    first, second = x[idx], x[idx]  # two epochs
    assert first.dtype == torch.float32 and tuple(first.shape) == (8, 3, 32, 32)
    assert not torch.equal(first, second)
    differs = [not torch.equal(a, b) for a, b in zip(first, second)]
    assert sum(differs) >= 6  # a new crop for (nearly) every image
    assert torch.equal(first * 255, (first * 255).round())  # uint8 values / 255
    # deterministic from the run's seed: the same seed, the same draws in the same order
    torch.manual_seed(0)
    again, _ = experience_images(train)
    assert torch.equal(again[idx], first) and torch.equal(again[idx], second)
    torch.manual_seed(1)
    other, _ = experience_images(train)
    assert not torch.equal(other[idx], first)
    # reading images in another grouping draws each image's own k-th crop: a batch of one
    # reads the same pixels as inside a batch of eight
    torch.manual_seed(0)
    single, _ = experience_images(train)
    assert torch.equal(single[3], first[3]) and torch.equal(single[torch.tensor([3])][0],
                                                            second[3])


def test_eval_view_is_the_eval_transform_exactly(imagenet_r):
    bm = build(imagenet_r, transform="pilot")
    train = bm.train_stream[0].dataset
    x, _ = experience_images(train)
    evaluated = dataset_tensors(train.eval())[0]  # the eval transform, per item from files
    view = x.eval_view()
    assert not view.random and torch.equal(view[torch.arange(len(x))], evaluated)
    # test experiences (eval transform, deterministic): stored as uint8, the same values
    test = bm.test_stream[0].dataset
    t, _ = experience_images(test)
    assert not t.random and t.stored.dtype == torch.uint8
    assert torch.equal(t[:], dataset_tensors(test)[0])


def test_deterministic_stream_reads_the_same_pixels_every_time(imagenet_r):
    train = build(imagenet_r, transform="none").train_stream[0].dataset
    x, y = experience_images(train)
    assert not x.random and x.stored.dtype == torch.uint8
    reference = dataset_tensors(train)[0]
    idx = torch.tensor([5, 0, 7])
    assert torch.equal(x[idx], x[idx]) and torch.equal(x[idx], reference[idx])
    assert torch.equal(x[2:6], reference[2:6]) and torch.equal(x[4], reference[4])


def test_values_not_k_over_255_stay_float():
    from clplatform.data import classification_dataset
    values = torch.rand(5, 3, 4, 4)
    x, _ = experience_images(classification_dataset(values, torch.arange(5)))
    assert x.stored.dtype == torch.float32 and torch.equal(x[:], values)


def test_frozen_computations_over_random_reads(imagenet_r):
    """frozen_rows never caches a random read (a new draw per epoch); map_batches (what is
    computed once: prototypes, closed-form heads) reads the eval view."""
    train = build(imagenet_r, transform="pilot").train_stream[0].dataset
    x, _ = experience_images(train)

    def fn(batch):
        return batch.mean(dim=(2, 3))
    rows = frozen_rows(fn, x, "cpu", budget_bytes=2**30)
    assert isinstance(rows, FrozenRows) and rows.random
    idx = torch.arange(10)
    assert not torch.equal(rows[idx], rows[idx])
    once = map_batches(fn, x, "cpu", batch_size=7)
    assert torch.equal(once, fn(x.eval_view()[:]))
    assert torch.equal(map_batches(lambda t: t, rows, "cpu"), once)  # through FrozenRows
    plain, _ = experience_images(build(imagenet_r, transform="none").train_stream[0].dataset)
    cached = frozen_rows(fn, plain, "cpu", budget_bytes=2**30)
    assert torch.is_tensor(cached) and torch.equal(cached, fn(plain[:]))


def test_training_passes_see_new_crops(imagenet_r):
    """The loader of fit_tensors (TensorBatches) over a FrozenRows of random reads: each
    pass (epoch) reads every image once, with a new crop per pass."""
    from clplatform.strategies.base import TensorBatches
    train = build(imagenet_r, transform="pilot").train_stream[0].dataset
    x, y = experience_images(train)
    rows = frozen_rows(lambda b: b.flatten(1), x, "cpu", budget_bytes=2**30)
    torch.manual_seed(0)
    epochs, width = [], rows[0:1].shape[1]
    for _ in range(2):
        seen = torch.zeros(len(x), width)
        for _batch in TensorBatches(torch.arange(len(x)), y, 16):
            seen[_batch[0]] = rows[_batch[0]]
        epochs.append(seen)
    # each image read once per pass (image 0 once more: the probe of the row width)
    assert x.draws[0] == 3 and bool((x.draws[1:] == 2).all())
    assert (epochs[0] != epochs[1]).any(dim=1).float().mean() > 0.75


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sema", "l2p"])
def test_tensor_strategies_train_on_an_augmented_stream(imagenet_r, runs_dir, strategy):
    """Each epoch reads new crops: two epochs on pilot differ from one epoch repeated on
    identical pixels (records), and the evaluator holds the test stream as uint8."""
    result = invoke("run", "--stream", "imagenet-r", "--stream-opt", f"root={imagenet_r}",
                    "--stream-opt", "image_size=32", "--stream-opt", "tasks=2",
                    "--stream-opt", "transform=pilot", "--strategy", strategy,
                    "--epochs", "2", "--out", runs_dir, "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    run = Path(json.loads(result.stdout)["run_dir"])
    rows = (run / "accuracy.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 2


def test_evaluator_holds_the_test_stream_as_uint8(imagenet_r):
    from clplatform.evaluator import Evaluator
    bm = build(imagenet_r, transform="pilot", tasks="2")
    ev = Evaluator(bm.test_stream, 200)
    assert isinstance(ev.test_x, ExperienceImages) and ev.test_x.stored.dtype == torch.uint8
    whole = torch.cat([dataset_tensors(e.dataset)[0] for e in bm.test_stream])
    assert torch.equal(ev.test_x[0:len(whole)], whole)
