"""Progress on stderr: bars on a terminal, plain lines in a log.

On a terminal: tqdm bars, one for experiences and one for the epochs of the current one.
When stderr is not a terminal (a log file, a pipe, a batch job), bars would print nothing
useful, so :class:`ProgressLog` writes plain lines instead: one when an experience has
trained (epochs, mean loss of its last epoch, seconds) and, during a long experience, one at
most every ``interval`` seconds (epoch, iteration, running loss), each with the time elapsed.
Pre-training uses the same lines (:func:`step_progress`), with an estimate of the time left.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Callable

from avalanche.core import SupervisedPlugin

LOG_INTERVAL_SECONDS = 30.0


def is_terminal(file: IO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLog:
    """Plain progress lines ``PREFIX: TEXT (M:SS elapsed)``: at each milestone the caller
    marks (``force=True``) and otherwise at most one every ``interval`` seconds."""

    def __init__(self, prefix: str, file: IO | None = None,
                 interval: float = LOG_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.prefix = prefix
        self.file = file if file is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.start = self._last = clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def due(self) -> bool:
        return self.clock() - self._last >= self.interval

    def line(self, text: str, force: bool = False) -> bool:
        """Write ``text`` if forced or due; whether it was written."""
        if not (force or self.due()):
            return False
        self._last = self.clock()
        print(f"{self.prefix}: {text} ({format_duration(self.elapsed)} elapsed)",
              file=self.file, flush=True)
        return True


class StepProgress:
    """Progress of ``total`` equal steps (pre-training): a tqdm bar with its time left on a
    terminal; in a log, a :class:`ProgressLog` line with the estimated time left once
    ``estimate_after`` seconds of steps are measured, then at every ``mark`` (an epoch)
    and at most every ``interval`` seconds. ``start``: steps done before (a resumed job);
    the time left is measured on this process's steps only."""

    def __init__(self, total: int, desc: str, unit: str = "step", file: IO | None = None,
                 enabled: bool = True, interval: float = LOG_INTERVAL_SECONDS,
                 estimate_after: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 start: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self._start = start
        self.file = file if file is not None else sys.stderr
        self.estimate_after = estimate_after
        self._bar = self._log = None
        self._estimated = False
        if enabled and is_terminal(self.file):
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.file,
                             dynamic_ncols=True, mininterval=0.5, leave=False, initial=start)
        elif enabled:
            self._log = ProgressLog(desc, self.file, interval, clock)

    def time_left(self) -> float | None:
        if self._log is None or self.done == self._start:
            return None
        return self._log.elapsed / (self.done - self._start) * (self.total - self.done)

    def _status(self, text: str) -> str:
        left = self.time_left()
        shown = f"{self.done}/{self.total} {self.unit}s"
        return (f"{text + ', ' if text else ''}{shown}"
                + (f", about {format_duration(left)} left" if left is not None else ""))

    def step(self, postfix: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._log is not None:
            if not self._estimated and self._log.elapsed >= self.estimate_after:
                self._estimated = True
                self._log.line(self._status("estimate"), force=True)
            else:
                self._log.line(self._status(postfix))

    def mark(self, text: str) -> None:
        """A milestone (an epoch): always a line in a log; the bar's postfix on a terminal."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        elif self._log is not None:
            self._log.line(self._status(text), force=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ProgressPlugin(SupervisedPlugin):
    """Run progress: bars on a terminal, :class:`ProgressLog` lines otherwise.

    ``epoch_listeners``: callables ``(strategy, loss)`` called after every training epoch
    with the mean training loss of that epoch (None when the strategy has no loss); the
    loss is tracked whenever there is a log or a listener (the run's loggers,
    :mod:`clplatform.app.loggers`)."""

    def __init__(self, enabled: bool = True, file: IO | None = None,
                 interval: float = LOG_INTERVAL_SECONDS):
        super().__init__()
        self.enabled = enabled
        self.file = file if file is not None else sys.stderr
        self.terminal = is_terminal(self.file)
        self.interval = interval
        self._experiences = None
        self._epochs = None
        self._log: ProgressLog | None = None
        self._where = ("experiences", 0, 1)  # label, index, total
        self._exp_start = 0.0
        self._epoch = self._iteration = 0
        self._loss_sum = None
        self._loss_count = 0
        self._last_epoch_loss: float | None = None
        self.epoch_listeners: list[Callable[[object, float | None], None]] = []

    # ---- terminal: tqdm bars
    def _bar(self, **kwargs):
        from tqdm import tqdm
        return tqdm(file=self.file, dynamic_ncols=True, mininterval=0.5, **kwargs)

    def start_experience(self, index: int, total: int, label: str = "experiences") -> None:
        if not self.enabled:
            return
        self._where = (label, index, total)
        if not self.terminal:
            if self._log is None:
                self._log = ProgressLog("clplat", self.file, self.interval)
            self._exp_start = self._log.elapsed
            return
        if self._experiences is None:
            self._experiences = self._bar(total=total, desc=label, unit="exp", position=0)
        self._experiences.n = index
        self._experiences.refresh()

    def before_training_exp(self, strategy, **kwargs):
        self._epoch = 0
        self._last_epoch_loss = None
        if self.enabled and self.terminal and strategy.train_epochs > 1:
            self._epochs = self._bar(total=strategy.train_epochs, desc="  epochs",
                                     unit="epoch", position=1, leave=False)

    # ---- log lines
    def _experience_name(self) -> str:
        label, index, total = self._where
        return "joint training" if label == "joint" else f"experience {index + 1}/{total}"

    def _mean_loss(self) -> float | None:
        if not self._loss_count:
            return None
        return float(self._loss_sum) / self._loss_count

    def before_training_epoch(self, strategy, **kwargs):
        self._iteration = 0
        self._loss_sum, self._loss_count = None, 0

    def after_training_iteration(self, strategy, **kwargs):
        if self._log is None and not self.epoch_listeners:
            return
        self._iteration += 1
        loss = getattr(strategy, "loss", None)
        if hasattr(loss, "detach") and loss.numel() == 1:
            value = loss.detach()  # summed as a tensor: no device sync per iteration
            self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
            self._loss_count += 1
        if self._log is not None and self._log.due():
            try:
                per_epoch = f"/{len(strategy.dataloader)}"
            except TypeError:
                per_epoch = ""
            mean = self._mean_loss()
            self._log.line(f"{self._experience_name()}: "
                           f"{self._epoch_text(self._epoch + 1, strategy)}, "
                           f"iteration {self._iteration}{per_epoch}"
                           + (f", loss {mean:.4f}" if mean is not None else ""))

    def after_training_epoch(self, strategy, **kwargs):
        self._epoch += 1
        self._last_epoch_loss = self._mean_loss()
        for listener in self.epoch_listeners:
            listener(strategy, self._last_epoch_loss)
        if self._epochs is not None:
            self._epochs.update(1)
        if self._log is not None and self._log.due():
            self._log.line(f"{self._experience_name()}: "
                           f"{self._epoch_text(self._epoch, strategy)} done" + self._loss_text())

    @staticmethod
    def _epoch_text(epoch: int, strategy) -> str:
        """``epoch 2/5``; a strategy with phases of its own runs more epochs than its
        ``train_epochs``: then ``epoch 7``."""
        total = getattr(strategy, "train_epochs", None)
        return f"epoch {epoch}/{total}" if isinstance(total, int) and epoch <= total \
            else f"epoch {epoch}"

    def _loss_text(self) -> str:
        loss = self._last_epoch_loss
        return f", loss {loss:.4f}" if loss is not None else ""

    def after_training_exp(self, strategy, **kwargs):
        if self._epochs is not None:
            self._epochs.close()
            self._epochs = None
        if self._experiences is not None:
            self._experiences.update(1)
        if self._log is not None:
            seconds = self._log.elapsed - self._exp_start
            epochs = f"{self._epoch} epoch{'s' if self._epoch != 1 else ''}, " \
                if self._epoch else ""
            self._log.line(f"{self._experience_name()} trained: {epochs}{seconds:.1f} s"
                           + self._loss_text(), force=True)

    def close(self) -> None:
        if self._experiences is not None:
            self._experiences.close()
            self._experiences = None
