"""Turning tensors into Avalanche 0.6 benchmarks; the metadata every stream carries.

Every stream is an Avalanche ``CLScenario`` with ``train_stream`` and ``test_stream`` whose
experiences know their classes (``classes_in_this_experience``) and task labels (all 0).
Images are float tensors in [0, 1], shape [C, H, W]. Class labels are renumbered in order of
appearance, so experience 0 holds classes 0..k-1, experience 1 the next ones, and so on;
``benchmark.info.classes`` gives the name of each label.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clplatform.cache import atomic_path, cache_file, read_cached, stable_hash
from clplatform.data import classification_dataset  # noqa: F401  (part of the streams' API)
from clplatform.errors import UserError
from clplatform.options import opt

SEED_MAX = 2**32 - 1  # NumPy's and scikit-learn's seeds are unsigned 32-bit integers


def seed_option(help: str = "seed of the data and the class order (default: run seed)"):
    """The ``seed`` field of every stream's options: none (the run seed) or 0..2^32-1. A
    builder reads it as set: :meth:`clplatform.streams.StreamSource.build` gives an unset
    one the run's seed before calling the builder (the one place that decides it)."""
    return opt(None, help, min=0, max=SEED_MAX)


@dataclass
class StreamInfo:
    """What a stream is, for the runner, the records and the reports."""
    name: str
    scenario: str                      # "class-incremental" | "domain-incremental"
    classes: list[str]                 # label -> class name
    image_shape: tuple[int, int, int]  # C, H, W
    domains: list[str] = field(default_factory=list)  # domain of each experience (domain-IL)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def classes_per_experience(num_classes: int, experiences: int) -> list[int]:
    """Split ``num_classes`` into ``experiences`` near-equal parts; no class is dropped.

    The first ``num_classes % experiences`` experiences get one class more.
    """
    if not 1 <= experiences <= num_classes:
        raise UserError(f"experiences must be between 1 and {num_classes} "
                        f"(the stream has {num_classes} classes), got {experiences}")
    base, extra = divmod(num_classes, experiences)
    return [base + (1 if i < extra else 0) for i in range(experiences)]


def to_float_images(images: np.ndarray, scale: float = 255.0) -> torch.Tensor:
    """uint8 [N, H, W] or [N, H, W, C] -> float [N, C, H, W] in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(scale)
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


def b0_split(num_classes: int, tasks: int, first: int | None = None) -> list[int]:
    """Classes per task of a "B0" split (PILOT's ``init_cls``/``increment``): ``first``
    classes in task 0, the rest equally over the other ``tasks - 1``; without ``first``,
    ``tasks`` equal tasks. A split that does not divide evenly is a UserError."""
    if not 1 <= tasks <= num_classes:
        raise UserError(f"tasks must be between 1 and {num_classes} (the stream has "
                        f"{num_classes} classes), got {tasks}")
    if first is None:
        if num_classes % tasks:
            raise UserError(f"tasks={tasks} does not divide the {num_classes} classes; "
                            "choose a divisor or give first=")
        return [num_classes // tasks] * tasks
    if not 1 <= first <= num_classes - (tasks - 1):
        raise UserError(f"first={first} leaves no class for the other {tasks - 1} tasks "
                        f"of {num_classes} classes")
    if tasks == 1:
        if first != num_classes:
            raise UserError(f"first={first} with tasks=1 must be all {num_classes} classes")
        return [first]
    rest, extra = divmod(num_classes - first, tasks - 1)
    if extra:
        raise UserError(f"the {num_classes - first} classes after first={first} do not "
                        f"divide into tasks-1={tasks - 1} equal tasks")
    return [first] + [rest] * (tasks - 1)


def legacy_permutation(n: int, seed: int | None) -> list[int]:
    """PILOT's class order: ``np.random.seed(seed); np.random.permutation(n)`` (NumPy's
    legacy generator, *not* :func:`seeded_permutation`); ``None``: the natural 0..n-1."""
    if seed is None:
        return list(range(n))
    return np.random.RandomState(seed).permutation(n).tolist()


def class_incremental(train: tuple, test: tuple, class_order: Sequence[int],
                      experiences: int | Sequence[int], info: StreamInfo,
                      transforms: dict | None = None):
    """A class-incremental benchmark; labels renumbered by ``class_order`` (experience 0
    holds ``class_order[:k]`` as labels 0..k-1).

    ``train``/``test``: ``(images, labels)``, images as :func:`classification_dataset`
    takes them (float or uint8 tensors, or a source read per item such as
    :class:`~clplatform.streams.files.ImageFiles`). ``experiences``: a number (near-equal
    split) or the classes of each experience (:func:`b0_split`). ``transforms``: Avalanche
    transform groups ``{"train": f, "eval": g}``; test experiences start in ``eval``."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    order = torch.as_tensor(list(class_order))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    sizes = (classes_per_experience(len(order), experiences) if isinstance(experiences, int)
             else list(experiences))
    datasets = {"train": classification_dataset(train[0], rank[torch.as_tensor(train[1])],
                                                transforms),
                "test": classification_dataset(test[0], rank[torch.as_tensor(test[1])],
                                               transforms).eval()}
    bm = class_incremental_benchmark(datasets, class_order=list(range(len(order))),
                                     num_classes_per_exp=sizes)
    bm = with_task_labels(bm)
    info.classes = [info.classes[int(c)] for c in order]
    bm.info = info
    return bm


def domain_incremental(train: list[tuple], test: list[tuple], info: StreamInfo,
                       transforms: dict | None = None):
    """A domain-incremental benchmark: one experience per (train, test) pair, same classes.
    Pairs and ``transforms`` as in :func:`class_incremental`."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    bm = benchmark_from_datasets(
        train=[classification_dataset(*p, transforms) for p in train],
        test=[classification_dataset(*p, transforms).eval() for p in test])
    bm = with_task_labels(with_classes_timeline(bm))
    bm.info = info
    return bm


def cached_arrays(kind: str, key: dict, make) -> dict[str, np.ndarray]:
    """``make()`` -> dict of arrays, cached on disk under a hash of ``key`` (an unreadable
    cache file is rebuilt; a cache that cannot be written only costs a warning)."""
    path = cache_file("streams", f"{kind}-{stable_hash(key)}.npz")

    def read(file: Path) -> dict[str, np.ndarray]:
        with np.load(file) as data:
            return {k: data[k] for k in data.files}
    arrays = read_cached(path, read)
    if arrays is not None:
        return arrays
    arrays = make()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except OSError as exc:
        print(f"clplat: warning: cannot write cache file {path}: {exc.strerror or exc}",
              file=sys.stderr)
    return arrays


def check_distinct(values, what: str, stream: str) -> None:
    """A stream's list option (its domains, its sources): at least one, none twice."""
    if not values:
        raise UserError(f"{stream} needs at least one {what.rstrip('s')}")
    if len(set(values)) != len(values):
        raise UserError(f"{what} must not repeat, got {','.join(values)}")


TRAIN_SALT, TEST_SALT = 0, 1  # seeds of the two independent draws (train, test) of a set


def cached_train_test(kind: str, key: dict, draw, per_class: int,
                      test_per_class: int) -> dict[str, np.ndarray]:
    """A generated stream's arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``, cached
    (:func:`cached_arrays`): ``draw(count, salt)`` -> (uint8 images, labels) with ``count``
    images per class, called with :data:`TRAIN_SALT` and :data:`TEST_SALT`."""
    def make() -> dict[str, np.ndarray]:
        xtr, ytr = draw(per_class, TRAIN_SALT)
        xte, yte = draw(test_per_class, TEST_SALT)
        return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
    return cached_arrays(kind, key, make)


def train_test_tensors(arrays: dict[str, np.ndarray]
                       ) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                  tuple[torch.Tensor, torch.Tensor]]:
    """((x_train, y_train), (x_test, y_test)) as float images in [0, 1] and int64 labels."""
    return ((to_float_images(arrays["x_train"]), torch.from_numpy(arrays["y_train"])),
            (to_float_images(arrays["x_test"]), torch.from_numpy(arrays["y_test"])))


def seeded_permutation(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(n).tolist()


def validate_benchmark(benchmark, in_chans: int) -> None:
    """Checks before a run starts: every experience has samples, labels lie in
    0..classes-1, and images have channels the backbone can take (its own, or 1 <-> 3)."""
    info = benchmark.info
    name = info.name
    streams = (("training", list(benchmark.train_stream)), ("test", list(benchmark.test_stream)))
    for kind, experiences in streams:
        if not experiences:
            raise UserError(f"stream {name} has no {kind} experience")
        for i, experience in enumerate(experiences):
            if len(experience.dataset) == 0:
                raise UserError(f"stream {name}: {kind} experience {i} is empty")
            targets = torch.as_tensor(list(experience.dataset.targets))
            low, high = int(targets.min()), int(targets.max())
            if low < 0 or high >= info.num_classes:
                raise UserError(f"stream {name}: {kind} experience {i} has label "
                                f"{low if low < 0 else high}, outside 0..{info.num_classes - 1}")
    channels = int(benchmark.train_stream[0].dataset[0][0].shape[0])
    if channels != in_chans and 1 not in (channels, in_chans):
        raise UserError(f"stream {name} has {channels}-channel images; the backbone takes "
                        f"{in_chans}")
