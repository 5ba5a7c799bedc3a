"""The data path of the strategies that train from tensors (issue 19): an experience's images
held as uint8 (ExperienceImages), the random training transform drawn again at every read,
nothing frozen cached over random reads, the evaluator's test stream as uint8."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from clplatform.app.cli import cli
from clplatform.data import (ExperienceImages, FileImages, dataset_tensors,
                             experience_images, image_cache)
from clplatform.streams import StreamSource
from clplatform.streams import files as F
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
    # draw=True reads as a training pass does: each image's next draw (here its second)
    torch.manual_seed(0)
    fresh, _ = experience_images(train)
    fresh[torch.arange(len(fresh))]
    drawn = map_batches(fn, fresh, "cpu", batch_size=7, draw=True)
    assert bool((fresh.draws == 2).all()) and not torch.equal(drawn, once)
    torch.manual_seed(0)
    again, _ = experience_images(train)
    again[torch.arange(len(again))]
    assert torch.equal(drawn, fn(again[torch.arange(len(again))]))
    plain, _ = experience_images(build(imagenet_r, transform="none").train_stream[0].dataset)
    cached = frozen_rows(fn, plain, "cpu", budget_bytes=2**30)
    assert torch.is_tensor(cached) and torch.equal(cached, fn(plain[:]))


def test_inflora_covariances_read_the_training_view(imagenet_r, pretrained_backbone):
    """InfLoRA's covariance passes read each image's next random draw, as the code iterates
    its training loader for them; the mean of x x^T of block 0's qkv input, by hand."""
    from clplatform import create_backbone, create_strategy
    from clplatform.strategies.base import StrategyContext, TrainSettings
    bm = build(imagenet_r, transform="pilot")
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=1, batch_size=8))
    strategy = create_strategy("inflora", ctx)
    model = strategy.model
    train = bm.train_stream[0].dataset
    torch.manual_seed(0)
    x, _ = experience_images(train)
    tokens = frozen_rows(model.embed, x, "cpu", budget_bytes=2**30)
    covs = strategy.covariances(tokens)
    assert len(covs) == len(model.wrappers) and bool((x.draws == 1).all())
    torch.manual_seed(0)
    same, _ = experience_images(train)
    with torch.no_grad():
        first = model.blocks[0].norm1(model.embed(same[torch.arange(len(same))]))
    flat = first.reshape(-1, first.shape[-1]).double()
    assert torch.allclose(covs[0], flat.T @ flat / len(flat), rtol=1e-6, atol=1e-8)
    with torch.no_grad():
        evaluated = model.blocks[0].norm1(model.embed(x.eval_view()[:]))
    flat = evaluated.reshape(-1, evaluated.shape[-1]).double()
    assert not torch.allclose(covs[0], flat.T @ flat / len(flat), rtol=1e-3, atol=1e-5)


def test_training_experiences_of_an_augmented_stream_concatenate(imagenet_r):
    """ExperienceImages.cat (compress --data all-seen) keeps the stream's random transform:
    uint8 held once, a new draw per read, the eval view the concatenated eval views."""
    bm = build(imagenet_r, transform="pilot")
    parts = [experience_images(e.dataset)[0] for e in bm.train_stream[:3]]
    joined = ExperienceImages.cat(parts)
    assert joined.random and joined.stored.dtype == torch.uint8
    assert len(joined) == sum(len(p) for p in parts) and joined.shape[1:] == (3, 32, 32)
    idx = torch.arange(len(joined))
    assert not torch.equal(joined[idx], joined[idx])
    assert torch.equal(joined.eval_view()[:],
                       torch.cat([p.eval_view()[:] for p in parts]))
    plain, _ = experience_images(build(imagenet_r, transform="none").train_stream[0].dataset)
    with pytest.raises(ValueError, match="one random transform"):
        ExperienceImages.cat([parts[0], plain])


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


# ------------------------------------------------------------------ --image-cache
@pytest.fixture
def decodes(monkeypatch):
    """How many images were decoded from files (ImageFiles' reads) so far."""
    count = [0]
    read = F.read_rgb

    def counting(path):
        count[0] += 1
        return read(path)
    monkeypatch.setattr(F, "read_rgb", counting)
    return count


def test_image_cache_decodes_once_and_reads_the_same_images(imagenet_r, tmp_path, decodes,
                                                            capsys):
    bm = build(imagenet_r, transform="pilot")
    train, test = bm.train_stream[1].dataset, bm.test_stream[1].dataset
    torch.manual_seed(0)
    plain, y = experience_images(train)
    plain_test, _ = experience_images(test)
    first_draws = plain[torch.arange(len(plain))]
    folder = tmp_path / "images"
    with image_cache(folder, 1.0):
        for round in range(2):
            before = decodes[0]
            torch.manual_seed(0)
            x, y2 = experience_images(train)
            t, _ = experience_images(test)
            assert decodes[0] - before == (len(train) + len(test) if round == 0 else 0)
            assert torch.equal(x.stored, plain.stored) and torch.equal(y2, y)
            assert torch.equal(t.stored, plain_test.stored)
            assert torch.equal(x[torch.arange(len(x))], first_draws)  # same seed, same draws
            # memory-mapped: never pinned whole (a CUDA FrozenRows keeps the mapped copy)
            assert x.mapped and t.mapped and x.eval_view().mapped and not plain.mapped
            assert x.pin_memory() is x and FrozenRows(lambda b: b, x, "cuda").x is x
            joined = ExperienceImages.cat([t, t])  # the evaluator's: indexed in place
            assert not torch.is_tensor(joined.stored)
            assert torch.equal(joined[:], torch.cat([plain_test[:], plain_test[:]]))
    files = sorted(p.name for p in folder.iterdir())
    assert len([f for f in files if not f.endswith(".labels.npy")]) == 2, files
    # a budget too small: a note, nothing written, the images decoded from their files at
    # every read (the same pixels, the same draws)
    small = tmp_path / "small"
    with image_cache(small, 1e-6):
        torch.manual_seed(0)
        x, y3 = experience_images(train)
        t, _ = experience_images(test)
    assert isinstance(x.stored, FileImages) and not list(small.glob("images-*"))
    assert "--image-cache-gib" in capsys.readouterr().err
    before = decodes[0]
    assert torch.equal(x[torch.arange(len(x))], first_draws) and torch.equal(y3, y)
    assert decodes[0] - before == len(x)
    assert torch.equal(t[:], plain_test[:])
    both = ExperienceImages.cat([t, plain_test])  # the evaluator's concatenation
    assert torch.equal(both[:], torch.cat([plain_test[:], plain_test[:]]))


def test_image_cache_is_not_a_folder(runs_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("run", "--image-cache", tmp_path / "file", "--epochs", "1",
                    "--out", runs_dir, "--quiet")
    assert result.exit_code == 2 and "--image-cache" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_runs_with_the_image_cache_record_the_same(imagenet_r, runs_dir, tmp_path, decodes):
    """l2p on pilot crops: records with --image-cache equal those without (accuracies and
    counts exactly; the mean loss to float rounding, as a memory-mapped batch may be summed
    in another order); the second run decodes no image of its experiences."""
    import pandas as pd

    def run(*extra):
        result = invoke("run", "--stream", "imagenet-r", "--stream-opt", f"root={imagenet_r}",
                        "--stream-opt", "image_size=32", "--stream-opt", "tasks=2",
                        "--strategy", "l2p", "--epochs", "1", "--out", runs_dir, "--quiet",
                        "--json", *extra)
        assert result.exit_code == 0, result.stderr
        return pd.read_csv(Path(json.loads(result.stdout)["run_dir"]) / "accuracy.csv")

    def same(records, reference):
        pd.testing.assert_frame_equal(records.drop(columns="loss"),
                                      reference.drop(columns="loss"), check_exact=True)
        pd.testing.assert_series_equal(records["loss"], reference["loss"], rtol=1e-6)
        return True
    reference = run()
    assert reference["accuracy"].nunique() > 1  # records that could differ
    cache = ["--image-cache", tmp_path / "cache", "--image-cache-gib", "1"]
    assert same(run(*cache), reference)
    before = decodes[0]
    assert same(run(*cache), reference)
    assert decodes[0] - before == 1  # only validate_benchmark's look at the first image


# ------------------------------------------------------------------ batched crops
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_batched_crops_match_pil(mode):
    """The same boxes (random-resized-crop + flip) give PIL's pixels: the batched matrix
    path within 2 levels (bicubic 4), > 95 % of pixels equal; the per-image path within 1."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode, RandomResizedCrop
    from torchvision.transforms import functional as TV
    from clplatform.data import crop_boxes
    interpolation = InterpolationMode(mode)
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(6, 3, 6, 6, generator=g), size=(48, 40),
                                             mode="bicubic", align_corners=False)
    images = (smooth * 200 + torch.rand(6, 3, 48, 40, generator=g) * 55).clamp(0, 255).to(
        torch.uint8)
    torch.manual_seed(0)
    boxes = [(*RandomResizedCrop.get_params(images[0], [0.05, 1.0], [3 / 4, 4 / 3]), k % 2 == 1)
             for k in range(6)]
    boxes[0] = (0, 0, 48, 40, False)  # shrinking and enlarging both covered
    reference = []
    for img, (top, left, h, w, flip) in zip(images, boxes):
        pil = TV.resized_crop(Image.fromarray(img.permute(1, 2, 0).numpy()), top, left, h, w,
                              [32, 32], interpolation)
        reference.append(TV.pil_to_tensor(TV.hflip(pil) if flip else pil))
    reference = torch.stack(reference).int()
    batched = crop_boxes(images, boxes, 32, interpolation, batched=True).int()
    single = crop_boxes(images, boxes, 32, interpolation, batched=False).int()
    assert (batched - reference).abs().max() <= (2 if mode == "bilinear" else 4)
    assert (batched == reference).float().mean() > 0.95
    assert (single - reference).abs().max() <= 1


def test_shot_stored_copy_gives_exactly_shots_random_crops():
    """``transform=shot`` keeps the (r, r) squash as its stored copy; each read is a 224 x 224
    window of it at a uniform position (SHOT's RandomCrop), optionally flipped: exact pixels,
    no resampling."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    from clplatform.data import crop_boxes, draw_boxes
    augment = F.image_transforms("shot", 224)["train"]
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (300, 410, 3), np.uint8))
    stored = augment.store(image)
    squash = torch.from_numpy(np.asarray(image.resize((256, 256), Image.BILINEAR)).copy())
    assert torch.equal(stored, squash.permute(2, 0, 1))
    boxes = draw_boxes(augment, 256, 256, list(range(300)))
    assert {(h, w) for _, _, h, w, _ in boxes} == {(224, 224)}
    tops = {top for top, *_ in boxes}
    assert min(tops) == 0 and max(tops) == 32 and len(tops) > 20  # uniform over 0..32
    assert {flip for *_, flip in boxes} == {False, True}
    crops = crop_boxes(stored[None].expand(4, -1, -1, -1), boxes[:4], 224,
                       InterpolationMode.BILINEAR)
    for crop, (top, left, _, _, flip) in zip(crops, boxes[:4]):
        window = stored[:, top:top + 224, left:left + 224]
        assert torch.equal(crop, window.flip(-1) if flip else window)


def test_linear_probe_reads_training_images_without_augmentation(imagenet_r):
    """The probe's training features come from the eval transform (the same at every read),
    not from the stream's random crops."""
    from clplatform.app.factories import create_backbone
    from clplatform.models.probe import stream_features
    bench = build(imagenet_r, transform="pilot", tasks="20")
    first = bench.train_stream[:1]
    backbone = create_backbone("vit-glyphs", pretrained=False)  # adapts 3 x 32 x 32 inputs
    torch.manual_seed(0)
    a, ya = stream_features(backbone, first)
    torch.manual_seed(1)
    b, yb = stream_features(backbone, first)
    assert (a == b).all() and (ya == yb).all() and len(ya) == 20
    x_eval, _ = dataset_tensors(first[0].dataset.eval())
    with torch.inference_mode():
        assert torch.allclose(torch.from_numpy(a), backbone(x_eval).float(), atol=1e-5)
