"""``digits``: scikit-learn's bundled 1,797 real handwritten digits (8x8), class-incremental."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from clplatform.options import opt
from clplatform.registry import register_stream

from .common import StreamInfo, class_incremental, seed_option, seeded_permutation


@dataclass
class DigitsOptions:
    experiences: int = opt(5, "number of experiences (10 classes split evenly)", min=1, max=10)
    test_fraction: float = opt(0.25, "fraction of each class held out for testing",
                               min=0.05, max=0.9)
    seed: Optional[int] = seed_option("seed of the split and the class order (default: run "
                                      "seed)")


@register_stream("digits", options=DigitsOptions,
                 help="class-incremental, scikit-learn's real handwritten digits (8x8), 5 x 2")
def digits(opts: DigitsOptions):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    x = torch.from_numpy(data.images).float().div_(16.0).unsqueeze(1)  # ink in [0, 1]
    y = torch.from_numpy(data.target).long()
    idx_train, idx_test = train_test_split(range(len(y)), test_size=opts.test_fraction,
                                           stratify=y.numpy(), random_state=opts.seed)
    info = StreamInfo("digits", "class-incremental", [str(d) for d in range(10)], (1, 8, 8))
    return class_incremental((x[idx_train], y[idx_train]), (x[idx_test], y[idx_test]),
                             seeded_permutation(10, opts.seed), opts.experiences, info)
