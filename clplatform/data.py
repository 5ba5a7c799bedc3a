"""Reading datasets into tensors once (evaluation sets, pre-training data, SEMA's caches)."""
from __future__ import annotations

import torch


def dataset_tensors(dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of an Avalanche/torch dataset as two tensors, read once in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys = [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
    return torch.cat(xs), torch.cat(ys).long()
