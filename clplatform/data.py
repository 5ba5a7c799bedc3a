"""Datasets and tensors: reading a dataset into tensors once (evaluation sets, pre-training
data, SEMA's caches) and images (tensors, or any indexable source read per item) as an
Avalanche classification dataset."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset, TensorDataset


_READ_WORKERS = [0]


@contextmanager
def reading_workers(workers: int):
    """Within the block, :func:`dataset_tensors` reads with ``workers`` processes
    (``--data-workers``; the runner sets it for a run)."""
    before = _READ_WORKERS[0]
    _READ_WORKERS[0] = workers
    try:
        yield
    finally:
        _READ_WORKERS[0] = before


def dataset_tensors(dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of an Avalanche/torch dataset as two tensors, read once in order (by
    :func:`reading_workers` processes: images of file-backed streams decode in parallel)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=_READ_WORKERS[0])
    xs, ys = [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
    return torch.cat(xs), torch.cat(ys).long()


class LabelledImages(Dataset):
    """``(images[i], labels[i])``: ``images`` is any indexable source read one item at a
    time (image files, uint8 arrays), so nothing is decoded before it is used."""

    def __init__(self, images: Any, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 image [C, H, W] -> float in [0, 1] (the same values as a whole batch / 255)."""
    return x.float().div_(255.0)


def classification_dataset(x: Any, y: torch.Tensor,
                           transforms: Mapping[str, Callable] | None = None):
    """An Avalanche classification dataset over images ``x`` and labels ``y``, with targets
    and task labels 0.

    ``x``: a float tensor [N, C, H, W] (used as it is), a uint8 tensor (converted to float
    in [0, 1] per item, so only the uint8 copy is held), or any indexable source read per
    item (e.g. :class:`clplatform.streams.files.ImageFiles`). ``transforms``: Avalanche
    transform groups ``{"train": f, "eval": g}`` applied to each image; the training
    template switches to ``eval`` for evaluation (``dataset.eval()``).
    Task-aware (``task_set``), as Avalanche's regularisation strategies (LwF, ...) expect.
    """
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import (
        TaskAwareSupervisedClassificationDataset)
    from avalanche.benchmarks.utils.transform_groups import TransformGroups
    y = torch.as_tensor(y).long()
    if torch.is_tensor(x) and x.dtype == torch.uint8 and transforms is None:
        transforms = {"train": uint8_to_float, "eval": uint8_to_float}
    source = TensorDataset(x, y) if torch.is_tensor(x) else LabelledImages(x, y)
    return TaskAwareSupervisedClassificationDataset(
        [source],
        transform_groups=TransformGroups(dict(transforms)) if transforms else None,
        data_attributes=[DataAttribute(y.tolist(), "targets"),
                         DataAttribute([0] * len(y), "targets_task_labels",
                                       use_in_getitem=True)])
