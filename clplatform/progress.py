"""Progress bars on stderr: one for experiences, one for the epochs of the current one.

Shown only when stderr is a terminal (tqdm's ``disable=None``), so logs stay clean.
"""
from __future__ import annotations

import sys

from avalanche.core import SupervisedPlugin


class ProgressPlugin(SupervisedPlugin):
    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self._experiences = None
        self._epochs = None

    def _bar(self, **kwargs):
        from tqdm import tqdm
        return tqdm(file=sys.stderr, dynamic_ncols=True, mininterval=0.5, disable=None, **kwargs)

    def start_experience(self, index: int, total: int, label: str = "experiences") -> None:
        if not self.enabled:
            return
        if self._experiences is None:
            self._experiences = self._bar(total=total, desc=label, unit="exp", position=0)
        self._experiences.n = index
        self._experiences.refresh()

    def before_training_exp(self, strategy, **kwargs):
        if self.enabled and strategy.train_epochs > 1:
            self._epochs = self._bar(total=strategy.train_epochs, desc="  epochs",
                                     unit="epoch", position=1, leave=False)

    def after_training_epoch(self, strategy, **kwargs):
        if self._epochs is not None:
            self._epochs.update(1)

    def after_training_exp(self, strategy, **kwargs):
        if self._epochs is not None:
            self._epochs.close()
            self._epochs = None
        if self._experiences is not None:
            self._experiences.update(1)

    def close(self) -> None:
        if self._experiences is not None:
            self._experiences.close()
            self._experiences = None
