"""InfLoRA's hyper-parameters (``shared/specs/ptm-comparators.md``), defaults from the official
code (liangyanshuo/InfLoRA: ``configs/cifar100_inflora.json``, ``methods/inflora.py``,
``models/vit_inflora.py``, ``utils/schedulers.py``). Training settings (Adam 5e-4, batch 128,
20 epochs; ImageNet-R: 50) are the strategy's training defaults (``--lr``,
``--batch-size``, ``--epochs``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from clplatform.options import opt


@dataclass
class InfLoRAOptions:
    rank: Optional[int] = opt(None, "rank r of each experience's branch (default: 10 x d / "
                                    "768, at least 2: the code's r = 10 on ViT-B)", min=1)
    eps_base: float = opt(0.95, "DualGPM energy threshold of the first experience, lambda_b "
                                "(code: 0.95 CIFAR-100, 0.98 ImageNet-R)", min=0, max=1)
    eps_end: float = opt(1.0, "threshold the linear schedule eps_t = lambda_b + (end - "
                              "lambda_b) t / T heads for (code: 1; set it to eps_base for "
                              "the paper's constant eps)", min=0, max=1)
    down_scale: float = opt(1 / math.sqrt(3), "factor of the designed down-projection (code: "
                                              "1/sqrt 3; paper: 1)", min=0)
    design: str = opt("projected", "down-projection of a new branch: projected (top singular "
                      "vectors of the input covariance with the old subspace projected away, "
                      "InfLoRA), unprojected (no projection) or random (Kaiming-uniform, as "
                      "sequential LoRA)", choices=("projected", "unprojected", "random"))
    blocks: int = opt(0, "the first N blocks get branches (0: all; 5: InfLoRA-b5, whose "
                         "code also uses the gpm memory and, on CIFAR-100, lr 1e-3)", min=0)
    memory: Optional[str] = opt(None, "memory of old input subspaces: dualgpm (the basis or "
                                "its complement, whichever is at most d/2 wide: "
                                "methods/inflora.py) or gpm (the basis only, up to d wide: "
                                "methods/inflorab5.py); default: gpm when blocks is set, "
                                "else dualgpm", choices=("dualgpm", "gpm"))
    merge: bool = opt(True, "fold finished branches into W_k, W_v (zero inference cost); "
                            "false: keep every branch and run it at inference")
    lr_schedule: str = opt("code", "per-epoch lr factor cos(99 pi e' / (200 (E - 1))): code "
                           "(e' = max(e - 1, 0): the code's CosineSchedule is one epoch late, "
                           "epochs 0 and 1 at lr, the last at 0.098 lr for E = 20), formula "
                           "(e' = e, the last at 0.016 lr), constant",
                           choices=("code", "formula", "constant"))
    weight_decay: float = opt(0.0, "Adam weight decay (code: 0)", min=0)
    classifier_alignment: bool = opt(False, "InfLoRA+CA (methods/inflora_ca.py): keep each "
                                     "class's feature mean and covariance; after every "
                                     "experience but the first, retrain all heads on "
                                     "Gaussian samples of every class seen")
    ca_epochs: int = opt(5, "classifier-alignment epochs (SGD 0.01, momentum 0.9, wd 5e-4, "
                            "cosine to 0)", min=1)
    ca_samples: int = opt(256, "Gaussian samples per class and epoch (also the batch size)",
                          min=1)
    ca_logit_norm: float = opt(0.1, "alignment logits divided by their mean per-head norm "
                                    "and by this temperature (0: plain logits, the code's "
                                    "CIFAR-100 branch of inflora_ca.py)", min=0)

    def resolved_memory(self) -> str:
        return self.memory or ("gpm" if self.blocks else "dualgpm")

    def resolved_rank(self, width: int) -> int:
        return self.rank or max(2, round(10 * width / 768))

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        """Parameters created in the first experience (a k/v branch per adapted block, a
        head): the runner checks them against the memory available."""
        blocks = min(self.blocks or depth, depth)
        r = self.resolved_rank(width)
        return blocks * (r * width + 2 * width * r) + (width + 1) * classes
