"""Datasets and tensors: reading a dataset into tensors once (evaluation sets, pre-training
data, SEMA's caches) and tensors as an Avalanche classification dataset."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def dataset_tensors(dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of an Avalanche/torch dataset as two tensors, read once in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys = [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
    return torch.cat(xs), torch.cat(ys).long()


def classification_dataset(x: torch.Tensor, y: torch.Tensor):
    """An Avalanche classification dataset over tensors, with targets and task labels 0.

    Task-aware (``task_set``), as Avalanche's regularisation strategies (LwF, ...) expect.
    """
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import (
        TaskAwareSupervisedClassificationDataset)
    y = y.long()
    return TaskAwareSupervisedClassificationDataset(
        [TensorDataset(x, y)],
        data_attributes=[DataAttribute(y.tolist(), "targets"),
                         DataAttribute([0] * len(y), "targets_task_labels",
                                       use_in_getitem=True)])
