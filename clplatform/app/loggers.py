"""Loggers researchers already use: a run's records in TensorBoard and Weights & Biases.

``clplat run --log tensorboard,wandb`` (and ``clplat sweep --log``, ``clplatform.run(...,
loggers=[...])``) sends, as the run goes:

- after each trained experience (and the evaluation before any training), the records the
  evaluator produced: ``accuracy/experience_<j>`` (accuracy on every test experience j,
  seen or not) and ``metrics/<name>`` (:func:`clplatform.metrics.summarize` of the records
  so far: final accuracy, forgetting, BWT, costs... as if the run ended there; values that
  are not defined yet, such as forgetting after one experience, are left out), against
  ``experiences_trained`` (0: the initial evaluation, k: after k experiences);
- after each training epoch, ``train/loss``: the mean training loss of that epoch (the
  one the progress lines show, :class:`clplatform.progress.ProgressPlugin`), against the
  training iterations so far (Avalanche's clock, which a checkpoint restores).

TensorBoard: event files in ``RUN_DIR/tensorboard/experiences`` and
``RUN_DIR/tensorboard/training`` (one axis each), written with
``torch.utils.tensorboard.SummaryWriter``. Weights & Biases: a run in ``RUN_DIR/wandb``,
offline unless the user set ``WANDB_MODE`` (W&B's error reporting off too; ``wandb sync
RUN_DIR/wandb/offline-run-*`` uploads it), silent (nothing on stdout/stderr).

A resumed run continues in the same folders: TensorBoard writers start with
``purge_step`` at the resume point, so what the interrupted experience had logged is hidden
and no step appears twice; W&B writes a second offline run with the same run id
(``resume="allow"``), whose steps continue the first.

Avalanche's ``TensorboardLogger``/``WandBLogger`` are not used: they receive
``MetricValue``s from Avalanche's ``EvaluationPlugin`` (clplatform's records come from its
own evaluator); ``TensorboardLogger`` cannot set ``purge_step`` for a resume, and
``WandBLogger`` logs everything at one ``step=`` (W&B drops a value whose step is below the
last one, so experience records and iteration losses cannot share it) and calls
``wandb.init`` without offline mode or silence (and, with wandb 0.31, fails on the
missing ``wandb.util.generate_id``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UserError

EXPERIENCE_AXIS = "experiences_trained"
ITERATION_AXIS = "iteration"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


class RunLogger:
    """One logging tool. ``check()`` imports it (before a run starts); an instance writes
    into the run directory; ``log`` sends scalars at ``step`` of ``axis``
    (:data:`EXPERIENCE_AXIS` or :data:`ITERATION_AXIS`)."""
    name: ClassVar[str]
    package: ClassVar[str]

    @classmethod
    def check(cls) -> None:
        raise NotImplementedError

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: "ResumePoint | None"):
        raise NotImplementedError

    def log(self, axis: str, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts again: experiences finished, training iterations done."""
    experiences: int
    iterations: int


def _named(exc: BaseException) -> str:
    """``Type: first line of the message`` (one line)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return type(exc).__name__ + (f": {first}" if first else "")


def _import_error(name: str, package: str, exc: BaseException) -> UserError:
    return UserError(f"--log {name}: cannot import {package} ({_named(exc)}); "
                     f"pip install {package}")


class TensorBoardLogger(RunLogger):
    name = "tensorboard"
    package = "tensorboard"

    @classmethod
    def check(cls) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except Exception as exc:  # noqa: BLE001  (missing or broken: one line)
            raise _import_error(cls.name, cls.package, exc) from None

    def __init__(self, run_dir, config, resume):
        from torch.utils.tensorboard import SummaryWriter
        root = Path(run_dir) / TENSORBOARD_DIR
        # a resume hides what the unfinished experience had logged (steps >= the restart)
        self.writers = {
            EXPERIENCE_AXIS: SummaryWriter(
                root / "experiences",
                purge_step=None if resume is None else resume.experiences + 1),
            ITERATION_AXIS: SummaryWriter(
                root / "training",
                purge_step=None if resume is None else resume.iterations + 1)}

    def log(self, axis, step, scalars):
        writer = self.writers[axis]
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step)
        writer.flush()

    def close(self, failed):
        for writer in self.writers.values():
            writer.close()


class WandbLogger(RunLogger):
    name = "wandb"
    package = "wandb"

    @classmethod
    def check(cls) -> None:
        try:
            import wandb
            wandb.init  # noqa: B018  (a broken install fails here)
        except Exception as exc:  # noqa: BLE001
            raise _import_error(cls.name, cls.package, exc) from None

    @staticmethod
    def _previous_id(folder: Path) -> str | None:
        """The run id of an earlier process of this run (``<dir>/run-<id>.wandb``)."""
        files = sorted(folder.glob("*/run-*.wandb"))
        return files[-1].stem[len("run-"):] if files else None

    def __init__(self, run_dir, config, resume):
        import wandb
        folder = Path(run_dir) / WANDB_DIR
        folder.mkdir(exist_ok=True)
        previous = self._previous_id(folder) if resume is not None else None
        # the user's WANDB_MODE (a server they configured) wins; otherwise never online
        mode = None if os.environ.get("WANDB_MODE") else "offline"
        if mode == "offline":  # nor does W&B's error reporting (read when its service
            # process starts: wandb-core --no-observability)
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                  save_code=False, disable_git=True)
        try:
            self.run = wandb.init(
                dir=str(run_dir), mode=mode, project=os.environ.get("WANDB_PROJECT",
                                                                     "clplatform"),
                name=Path(run_dir).name, id=previous,
                resume="allow" if previous else None, config=config, settings=settings,
                reinit="create_new")
        except Exception as exc:  # noqa: BLE001  (a user's server or settings: one line)
            raise UserError(f"--log wandb: cannot start a W&B run: {_named(exc)}") from None
        self.run.define_metric(EXPERIENCE_AXIS)
        self.run.define_metric(ITERATION_AXIS)
        for prefix in ("accuracy/*", "metrics/*"):
            self.run.define_metric(prefix, step_metric=EXPERIENCE_AXIS)
        self.run.define_metric("train/*", step_metric=ITERATION_AXIS)

    def log(self, axis, step, scalars):
        self.run.log({**scalars, axis: step})

    def close(self, failed):
        self.run.finish(exit_code=1 if failed else 0)


LOGGERS: dict[str, type[RunLogger]] = {cls.name: cls
                                       for cls in (TensorBoardLogger, WandbLogger)}


def parse_loggers(values: tuple[str, ...] | list[str] | str | None) -> list[str]:
    """``--log`` values (repeatable, each a comma list) -> known logger names, in order,
    once each; an unknown name is a :class:`UserError`."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    names = [v.strip().lower() for value in values for v in str(value).split(",")
             if v.strip()]
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"--log {name}: unknown logger; choose from "
                            f"{', '.join(LOGGERS)}")
    return list(dict.fromkeys(names))


def check_loggers(names: list[str]) -> list[str]:
    """The names validated and their packages importable (before a run starts)."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UserError(f"loggers must be a list of names, got {names!r}")
    names = parse_loggers(list(names))
    for name in names:
        LOGGERS[name].check()
    return names


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class RunLoggers:
    """The loggers of one run, called by the runner when an experience is recorded and by
    the progress plugin when an epoch ends."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any],
                 resume: ResumePoint | None = None, recorded: set[int] | None = None):
        self.loggers: list[RunLogger] = []
        self.logged: set[int] = set(recorded or ())  # train_exp values already logged
        try:
            for name in names:
                self.loggers.append(LOGGERS[name](run_dir, config, resume))
        except BaseException:
            self.close(failed=True)
            raise

    def _log(self, axis: str, step: int, scalars: dict[str, float]) -> None:
        if scalars:
            for logger in self.loggers:
                logger.log(axis, step, scalars)

    def experience_recorded(self, accuracy, experiences) -> None:
        """The records of every experience finished since the last call (``accuracy`` and
        ``experiences``: the run's records so far, as the runner writes them)."""
        from .. import metrics
        if not self.loggers:
            return
        for train_exp in sorted(set(accuracy["train_exp"]) - self.logged):
            rows = accuracy[accuracy["train_exp"] == train_exp]
            scalars = _finite({f"accuracy/experience_{int(r.eval_exp)}": r.accuracy
                               for r in rows.itertuples()})
            if train_exp >= 0:
                summary = metrics.summarize(
                    accuracy[accuracy["train_exp"] <= train_exp],
                    experiences[experiences["train_exp"] <= train_exp])
                scalars.update(_finite({f"metrics/{k}": v for k, v in summary.items()}))
            self._log(EXPERIENCE_AXIS, int(train_exp) + 1, scalars)
            self.logged.add(int(train_exp))

    def epoch_finished(self, strategy, loss: float | None) -> None:
        if loss is not None:
            self._log(ITERATION_AXIS, int(strategy.clock.train_iterations),
                      _finite({"train/loss": loss}))

    def close(self, failed: bool = False) -> None:
        for logger in self.loggers:
            try:
                logger.close(failed)
            except Exception:  # noqa: BLE001  (the run's records are safe; say so)
                import sys
                print(f"clplat: warning: could not close the {logger.name} logger",
                      file=sys.stderr)
        self.loggers = []
