"""CODA-Prompt's hyper-parameters (``shared/specs/prompt-comparators.md``), defaults from the
official code (GT-RIPL/CODA-Prompt: ``models/zoo.py`` CodaPrompt, ``configs/*_prompt.yaml``,
``experiments/*.sh`` ``--prompt_param 100 8 0.0``, ``learners/prompt.py``,
``utils/schedulers.py``, ``trainer.py``). Training settings (Adam 1e-3, batch 128, 20
epochs) are the strategy's training defaults (``--lr``, ``--batch-size``, ``--epochs``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clplatform.options import opt


@dataclass
class CODAOptions:
    components: int = opt(100, "component pool size M per prompted block (code: 100)", min=1)
    components_per_experience: Optional[int] = opt(
        None, "new components per experience (default: int(M / experiences in the stream), "
              "as the code's int(e_pool_size / n_tasks))", min=1)
    length: int = opt(8, "prompt length: the first half are prefix keys, the second half "
                         "prefix values (code: 8 -> 4 + 4)", min=2)
    layers: int = opt(5, "blocks 0..layers-1 get prompts (code: 0-4), capped at the backbone "
                         "depth", min=1)
    ortho_weight: float = opt(0.0, "weight of the orthogonality penalty mean((X X^T - I)^2) "
                              "over K, A, P of each block (current code: 0; beta release / "
                              "paper: 0.1)", min=0)
    init: str = opt("gram-schmidt", "gram-schmidt: each experience's new rows are Gaussian, "
                    "orthogonalised against every earlier row and unit-normalised (current "
                    "code); orthogonal-start: all M rows orthogonal at the start (beta "
                    "release, paper)", choices=("gram-schmidt", "orthogonal-start"))
    orthogonalise: str = opt("span", "gram-schmidt against earlier rows: span (exactly "
                             "orthogonal to the span of the earlier, trained rows) or code "
                             "(the code's sum of projections onto each earlier row, only "
                             "approximately orthogonal once old rows have trained)",
                             choices=("span", "code"))
    attention: bool = opt(True, "attention vectors A (alpha = cos(q * A, K)); false: "
                                "alpha = cos(q, K) (ablation)")
    lr_schedule: str = opt("code", "per-epoch cosine lr cos(99 pi e' / (200 (E - 1))): code "
                           "(e' = max(e - 1, 0): the code's scheduler is one epoch late, "
                           "epochs 0 and 1 at lr, the last at 0.098 lr for E = 20), formula "
                           "(e' = e, the last epoch at 0.016 lr), constant",
                           choices=("code", "formula", "constant"))
    drop_last: bool = opt(True, "the training loader drops the last incomplete batch (code)")

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        """Parameters created by the first experience, at most (all M components, the head):
        the runner checks them against the memory available (``build_within_memory``)."""
        layers = min(self.layers, depth)
        return layers * self.components * (self.length * width + 2 * width) + \
            (width + 1) * classes
