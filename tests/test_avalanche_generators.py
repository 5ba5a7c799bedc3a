"""Benchmarks built with Avalanche 0.6's own generators (the "Benchmark Generators" of its
API: class_incremental_benchmark, nc/ni_benchmark, benchmark_from_datasets,
new_instances_benchmark, task_incremental_benchmark, data_incremental_benchmark,
benchmark_with_validation_stream, the dataset/tensor/path/file-list helpers) run as they
are: passed to ``clplatform.run`` or returned by a stream function, on tiny tensors,
offline."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import TensorDataset

import clplatform
from clplatform.app.cli import cli
from clplatform.streams.custom import complete_benchmark

CLASSES, TRAIN, TEST = 4, 24, 12


def _tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g), torch.arange(n) % CLASSES


def _plain(n: int, seed: int) -> TensorDataset:
    """A plain torch dataset with ``targets``: what as_classification_dataset takes."""
    x, y = _tensors(n, seed)
    dataset = TensorDataset(x, y)
    dataset.targets = y.tolist()
    return dataset


def _classification(n: int, seed: int):
    """An Avalanche classification dataset without task labels."""
    from avalanche.benchmarks.utils import as_classification_dataset
    return as_classification_dataset(_plain(n, seed))


def _files(root: Path, n: int, seed: int) -> list[tuple[str, int]]:
    from PIL import Image
    x, y = _tensors(n, seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (image, label) in enumerate(zip(x, y)):
        path = root / f"{seed}-{i}.png"
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(path)
        out.append((str(path), int(label)))
    return out


def class_incremental(tmp):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    return class_incremental_benchmark({"train": _classification(TRAIN, 0),
                                        "test": _classification(TEST, 1)}, num_experiences=2)


def nc(tmp):
    from avalanche.benchmarks import nc_benchmark
    return nc_benchmark(_classification(TRAIN, 0), _classification(TEST, 1), n_experiences=2,
                        task_labels=False, seed=0)


def nc_task_labels(tmp):
    from avalanche.benchmarks import nc_benchmark
    return nc_benchmark(_classification(TRAIN, 0), _classification(TEST, 1), n_experiences=2,
                        task_labels=True, seed=0)


def ni(tmp):
    from avalanche.benchmarks import ni_benchmark
    return ni_benchmark(_classification(TRAIN, 0), _classification(TEST, 1), n_experiences=2,
                        seed=0)


def from_datasets(tmp):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    return benchmark_from_datasets(train=[_classification(TRAIN, 0), _classification(TRAIN, 2)],
                                   test=[_classification(TEST, 1), _classification(TEST, 3)])


def new_instances(tmp):
    from avalanche.benchmarks.scenarios.supervised import new_instances_benchmark
    return new_instances_benchmark(_classification(TRAIN, 0), _classification(TEST, 1), 2,
                                   seed=0)


def task_incremental(tmp):
    from avalanche.benchmarks.scenarios.task_aware import task_incremental_benchmark
    return task_incremental_benchmark(class_incremental(tmp))


def data_incremental(tmp):
    from avalanche.benchmarks import data_incremental_benchmark
    return data_incremental_benchmark(nc(tmp), experience_size=6)


def dataset_helper(tmp):
    from avalanche.benchmarks import dataset_benchmark
    return dataset_benchmark([_classification(TRAIN, 0), _classification(TRAIN, 2)],
                             [_classification(TEST, 1), _classification(TEST, 3)])


def tensors_helper(tmp):
    from avalanche.benchmarks import tensors_benchmark
    return tensors_benchmark([_tensors(TRAIN, 0), _tensors(TRAIN, 2)],
                             [_tensors(TEST, 1), _tensors(TEST, 3)], task_labels=[0, 0])


def paths_helper(tmp):
    from avalanche.benchmarks import paths_benchmark
    from torchvision.transforms import ToTensor
    return paths_benchmark([_files(tmp, TRAIN, 0), _files(tmp, TRAIN, 2)],
                           [_files(tmp, TEST, 1), _files(tmp, TEST, 3)], task_labels=[0, 0],
                           train_transform=ToTensor(), eval_transform=ToTensor())


def filelist_helper(tmp):
    from avalanche.benchmarks import filelist_benchmark
    from torchvision.transforms import Compose, Grayscale, ToTensor
    lists = []
    for seed, n in ((0, TRAIN), (1, TEST)):
        listing = tmp / f"list{seed}.txt"
        listing.write_text("".join(f"{Path(p).name} {c}\n" for p, c in _files(tmp, n, seed)))
        lists.append(listing)
    gray = Compose([Grayscale(), ToTensor()])  # the file-list loader opens images as RGB
    return filelist_benchmark(tmp, [lists[0]], [lists[1]], task_labels=[0],
                              train_transform=gray, eval_transform=gray)


def with_validation_stream(tmp):
    from avalanche.benchmarks.scenarios.validation_scenario import (
        benchmark_with_validation_stream)
    return benchmark_with_validation_stream(class_incremental(tmp), validation_size=0.25,
                                            seed=0)


def torch_datasets(tmp):
    """A scenario of experiences over plain torch datasets (with ``targets``)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
    from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
    return CLScenario([EagerCLStream(name, [DatasetExperience(dataset=_plain(n, seed))])
                       for name, n, seed in (("train", TRAIN, 0), ("test", TEST, 1))])


# generator, training experiences, test experiences, samples per test pass
GENERATORS = [(class_incremental, 2, 2, TEST), (nc, 2, 2, TEST), (nc_task_labels, 2, 2, TEST),
              (ni, 2, 1, TEST), (from_datasets, 2, 2, 2 * TEST), (new_instances, 2, 1, TEST),
              (task_incremental, 2, 2, TEST), (data_incremental, 4, 2, TEST),
              (dataset_helper, 2, 2, 2 * TEST), (tensors_helper, 2, 2, 2 * TEST),
              (paths_helper, 2, 2, 2 * TEST), (filelist_helper, 1, 1, TEST),
              (with_validation_stream, 2, 2, TEST),
              (torch_datasets, 1, 1, TEST)]


@pytest.mark.parametrize("make, n_train, n_test, tested", GENERATORS,
                         ids=[g[0].__name__ for g in GENERATORS])
def test_every_avalanche_generator_runs(make, n_train, n_test, tested, tmp_path, runs_dir,
                                        pretrained_backbone):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benchmark = make(tmp_path / "images")
    completed = complete_benchmark(benchmark, make.__name__)
    assert len(completed.train_stream) == n_train and len(completed.test_stream) == n_test
    assert completed.info.classes == ["0", "1", "2", "3"]
    for stream in (completed.train_stream, completed.test_stream):
        for i, experience in enumerate(stream):
            assert experience.current_experience == i
            sample = experience.dataset[0]
            # mini-batches end with the task label, the one the experience declares
            assert len(sample) == 3 and sample[2] == experience.task_label
            assert set(experience.classes_in_this_experience) <= set(range(CLASSES))
    run = clplatform.run("naive", benchmark, epochs=1, out=runs_dir)
    assert len(run.experiences) == n_train
    per_pass = run.accuracy[run.accuracy["train_exp"] >= 0].groupby("train_exp")["n_samples"]
    assert per_pass.sum().eq(tested).all() and len(per_pass) == n_train


def test_a_stream_function_returning_a_generator_benchmark(tmp_path, runs_dir,
                                                           pretrained_backbone):
    """Through the command line, with another strategy: class_incremental_benchmark over
    as_classification_dataset (no task labels) returned by the user's function."""
    script = tmp_path / "mine.py"
    script.write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "from avalanche.benchmarks.utils import as_classification_dataset\n"
        "from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark\n"
        "def data(n, seed):\n"
        "    g = torch.Generator().manual_seed(seed)\n"
        "    y = torch.arange(n) % 4\n"
        "    ds = TensorDataset(torch.rand(n, 1, 16, 16, generator=g), y)\n"
        "    ds.targets = y.tolist()\n"
        "    return as_classification_dataset(ds)\n"
        "def bench(experiences=2):\n"
        "    return class_incremental_benchmark({'train': data(24, 0), 'test': data(12, 1)},\n"
        "                                       num_experiences=experiences)\n")
    result = CliRunner().invoke(cli, ["run", "--strategy", "simplecil", "--stream",
                                      f"{script}:bench", "--out", str(runs_dir), "--quiet",
                                      "--json"], prog_name="clplat")
    assert result.exit_code == 0, result.output
    run = clplatform.load_run(json.loads(result.stdout)["run_dir"])
    assert run.config["stream"]["scenario"] == "class-incremental"
    assert list(run.experiences["experience_size"]) == [12, 12]
    final = run.accuracy[run.accuracy["train_exp"] == 1]
    assert final["n_samples"].sum() == 12


def test_a_dataset_without_class_labels_is_named():
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
    from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream

    from clplatform.errors import UserError
    unlabelled = TensorDataset(*_tensors(TEST, 1))  # no targets attribute
    benchmark = CLScenario([EagerCLStream("train", [DatasetExperience(dataset=_plain(TRAIN, 0))]),
                            EagerCLStream("test", [DatasetExperience(dataset=unlabelled)])])
    with pytest.raises(UserError, match="mine: test experience 0 holds a TensorDataset "
                                        r"without targets \(class labels\)"):
        complete_benchmark(benchmark, "mine")
    for labels in (["cat", "dog"] * (TEST // 2), [0.5] * TEST, [float("nan")] * TEST):
        unlabelled.targets = labels
        with pytest.raises(UserError, match="stream mine: labels must be integers >= 0"):
            complete_benchmark(benchmark, "mine")
