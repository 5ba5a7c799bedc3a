"""Published results, shown beside the measured ones when a run's setting matches.

Each value carries its source. A run matches a published setting when its strategy, its
benchmark (the stream's data and number of experiences) and its backbone (the exact timm tag
the authors' code loads) are the published ones; class order, seeds and augmentation may
still differ, so the column is for orderings and orders of magnitude, not for a test of
equality. Values are percentages as printed in the sources (``shared/specs/sema.md``,
``prompt-comparators.md``, ``ptm-comparators.md``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: the ViT-B/16 of SEMA's Table 1 (PILOT hard-codes AugReg IN-21k -> IN-1k)
VIT_B16_IN1K = "vit_base_patch16_224.augreg_in21k_ft_in1k"
SEMA_TABLE1 = "SEMA (Wang et al., CVPR 2025), Table 1"

#: stream names (as a run records them) -> benchmark
BENCHMARKS = {"avalanche:SplitCIFAR100": "cifar100", "cifar100": "cifar100",
              "imagenet-r": "imagenet-r"}


@dataclass(frozen=True)
class Published:
    strategy: str
    benchmark: str
    experiences: int
    backbone: str
    final_accuracy: float              # A_N, %
    average_incremental_accuracy: float | None
    source: str


def _table1(strategy: str, cifar: tuple, inr5: tuple | None = None,
            inr10: tuple | None = None, inr20: tuple | None = None) -> list[Published]:
    """Rows of SEMA's Table 1: (Ā, A_N) on CIFAR-100 10 tasks, ImageNet-R 5/10/20 tasks."""
    rows = []
    for benchmark, experiences, pair in (("cifar100", 10, cifar), ("imagenet-r", 5, inr5),
                                         ("imagenet-r", 10, inr10), ("imagenet-r", 20, inr20)):
        if pair is not None:
            average, final = pair
            rows.append(Published(strategy, benchmark, experiences, VIT_B16_IN1K, final,
                                  average, SEMA_TABLE1))
    return rows


PUBLISHED: tuple[Published, ...] = tuple(
    _table1("l2p", (84.77, 77.87), (77.40, 73.59), (66.97, 62.72), (70.67, 62.90))
    + _table1("dualprompt", (86.60, 80.43), (76.39, 72.29), (72.83, 66.75), (62.33, 61.97))
    + _table1("coda-prompt", (91.55, 86.11), (81.63, 76.98), (81.11, 75.25), (75.00, 70.02))
    + _table1("aper", (90.55, 85.62), (79.91, 74.25), (79.11, 73.15), (75.84, 69.10))
    + _table1("inflora", (90.51, 85.05), (78.58, 72.58), (81.39, 75.32), (78.87, 72.60))
    + _table1("simplecil", (None, 76.21))
    + _table1("sema", (91.37, 86.98), inr20=(None, 74.53)))


def published_for(strategy: str, config: Mapping[str, Any]) -> Published | None:
    """The published result of ``strategy`` in the setting of a run's resolved
    ``config`` (config.json), or None."""
    stream = config.get("stream", {})
    benchmark = BENCHMARKS.get(str(stream.get("name", "")))
    backbone = str(config.get("backbone", {}).get("name", "")).removeprefix("timm:")
    for row in PUBLISHED:
        if (row.strategy == strategy and row.benchmark == benchmark
                and row.experiences == stream.get("experiences_in_stream")
                and row.backbone == backbone):
            return row
    return None
