"""The active setting: target experiences with masked labels and a label oracle.

For a strategy registered with ``active=True`` (its options have ``budget_per_round`` and
``rounds``), the runner hands every experience after the first over through
``masked_experience``: the same samples with every target set to -1, and an ``Oracle`` —
the only holder of that experience's labels — handed in as
``strategy.train(experience, oracle=oracle)``.

A strategy gets the target samples with every label masked and this oracle. ``query`` reveals
the labels of pool indices and charges the budget: at most ``per_round`` new labels in a round,
``rounds`` rounds in all; a query past the budget raises ``BudgetExceeded``. Re-asking an index
already revealed is free. The labels are kept in a closure rather than an attribute, so no
ordinary attribute path leads to them (a test also proves behaviourally that unqueried labels
cannot influence a run).
"""
from __future__ import annotations

import torch

MASKED_LABEL = -1


class BudgetExceeded(RuntimeError):
    """A query past the oracle's budget."""


class Oracle:
    def __init__(self, labels: torch.Tensor, per_round: int, rounds: int):
        hidden = labels.clone()
        self._reveal = lambda idx: hidden[idx].clone()
        self.size = len(hidden)
        self.per_round, self.rounds = per_round, rounds
        self.round = 0                      # rounds started
        self.queried: list[int] = []        # indices revealed, in order
        self._this_round = 0

    @classmethod
    def with_fraction(cls, labels: torch.Tensor, fraction: float, rounds: int) -> "Oracle":
        """Budget per round = floor(fraction x size), so the total never exceeds the nominal
        fraction (at least one label per round)."""
        return cls(labels, max(1, int(fraction * len(labels))), rounds)

    @property
    def budget(self) -> int:
        return self.per_round * self.rounds

    @property
    def labels_used(self) -> int:
        return len(self.queried)

    def start_round(self) -> None:
        if self.round >= self.rounds:
            raise BudgetExceeded(f"all {self.rounds} rounds of the budget are used")
        self.round += 1
        self._this_round = 0

    def query(self, indices: torch.Tensor) -> torch.Tensor:
        """Labels of ``indices`` (pool positions); charges the new ones to this round."""
        indices = torch.as_tensor(indices, dtype=torch.long).flatten()
        if self.round == 0:
            raise BudgetExceeded("query before the first round started")
        if len(indices) and (indices.min() < 0 or indices.max() >= self.size):
            raise IndexError(f"pool index out of range 0..{self.size - 1}")
        known = set(self.queried)
        new = list(dict.fromkeys(i for i in indices.tolist() if i not in known))
        if self._this_round + len(new) > self.per_round:
            raise BudgetExceeded(
                f"round {self.round}: {self._this_round + len(new)} labels asked, "
                f"budget {self.per_round} per round")
        self.queried.extend(new)
        self._this_round += len(new)
        return self._reveal(indices)


def check_budget(experiences, fraction: float, rounds: int) -> None:
    """Before a run: every target experience (all but the first) has the samples that
    ``rounds`` rounds of ``Oracle.with_fraction`` query, else a UserError naming the numbers."""
    from .errors import UserError
    for i, experience in enumerate(experiences):
        size = len(experience.dataset)
        per_round = max(1, int(fraction * size))
        if i > 0 and rounds * per_round > size:
            raise UserError(
                f"rounds={rounds} x budget_per_round={fraction:g} queries {rounds} x "
                f"{per_round} = {rounds * per_round} labels but target experience {i} has "
                f"{size} samples: lower rounds or budget_per_round (at least one label is "
                "queried per round)")


def masked_experience(experience, fraction: float, rounds: int):
    """(experience with every label masked, oracle holding the labels)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience

    from .data import classification_dataset, experience_images
    x, y = experience_images(experience.dataset)  # held as uint8, read per item
    masked = DatasetExperience(dataset=classification_dataset(x, torch.full_like(y, MASKED_LABEL)),
                               current_experience=experience.current_experience)
    return masked, Oracle.with_fraction(y, fraction, rounds)
