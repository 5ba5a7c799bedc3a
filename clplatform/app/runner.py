"""The runner: resolve a configuration, build stream, backbone and strategy, train experience by
experience, evaluate after each, and store the records.

Everything a user can get wrong (names, options, values, files) is checked while building,
before the run directory exists, so bad input never leaves a directory behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..active import check_budget, masked_experience
from ..data import image_cache, reading_workers
from ..errors import UserError
from ..interrupt import RunInterrupted, StopRequest, safe_points
from ..options import options_dict
from .spec import RunSpec, make_spec, resolve, resume_spec


class Prepared:
    """A validated, built run that has not started yet (no directory exists)."""

    def __init__(self, spec: RunSpec, progress: bool):
        from ..checkpoint import tag_samples
        from ..contract import StrategyContext
        from ..divergence import divergence_check
        from ..evaluator import Evaluator
        from ..precision import MixedPrecision
        from ..progress import ProgressPlugin
        from ..seeding import seed_everything
        from clplatform.streams.common import validate_benchmark
        from .factories import build_strategy

        resolved = resolve(spec)  # names and options first: cheap checks before building
        strategy_entry, hparams, train = resolved.strategy, resolved.hparams, resolved.train
        settings = resolved.settings()

        seed_everything(settings.seed)
        self.benchmark = resolved.stream.build(settings.seed)
        tag_samples(self.benchmark.train_stream)  # buffers are saved as sample ids
        self.backbone = resolved.backbone.builder(resolved.backbone_options)
        validate_benchmark(self.benchmark, self.backbone.in_chans)
        self.info = self.benchmark.info
        self.joint = strategy_entry.traits.joint
        self.active = strategy_entry.traits.active
        self.resumable = strategy_entry.traits.resumable
        if self.active:  # labels of every target experience through rounds of queries
            check_budget(self.benchmark.train_stream, hparams.budget_per_round, hparams.rounds)
        self.start = 0  # first experience to train (after a resume: the next unfinished one)
        self.hparams = hparams
        self.image_cache = (train.image_cache, train.image_cache_gib)
        with image_cache(*self.image_cache):  # the test stream, read once, as uint8
            self.evaluator = Evaluator(self.benchmark.test_stream, self.info.num_classes,
                                       settings.eval_batch_size, spec.strategy,
                                       flops=train.flops)
        self.evaluator.meter.count_every_iteration = (
            strategy_entry.traits.varying_iteration_cost)
        self.progress = ProgressPlugin(enabled=progress)
        self.stop = StopRequest()
        self.precision = MixedPrecision(settings.precision, settings.device)
        context = StrategyContext(self.backbone, self.info, settings,
                                  plugins=[self.progress, self.evaluator, self.precision,
                                           safe_points(self.stop), divergence_check()],
                                  report_round=self.evaluator.record_round)
        seed_everything(settings.seed)  # same model initialisation whatever was built before
        self.strategy = build_strategy(strategy_entry, context, hparams)
        self.settings = settings
        self.out = train.out
        stream_source = resolved.stream
        self.config = {
            "strategy": {"name": spec.strategy, **options_dict(hparams)},
            "stream": {"name": stream_source.name, **stream_source.config(),
                       "scenario": self.info.scenario, "classes": self.info.classes,
                       "domains": self.info.domains,
                       "experiences_in_stream": len(self.benchmark.train_stream)},
            "backbone": {"name": spec.backbone, **options_dict(resolved.backbone_options)},
            "train": {**dataclasses.asdict(settings), "out": train.out,
                      "device_requested": train.device, "flops": train.flops,
                      "keep_model": train.keep_model, "image_cache": train.image_cache,
                      "image_cache_gib": train.image_cache_gib},
            "loggers": resolved.loggers,
        }
        self.label = resolved.label
        if resolved.unused:  # a warning, not an error: sweeps set them for every strategy
            # at once; only once everything is built, so that an error stays the one line
            print(f"clplat: warning: strategy {spec.strategy!r} does not use "
                  f"{', '.join(resolved.unused)}; its own hyper-parameters are set with --set "
                  f"(clplat list strategies -v)", file=sys.stderr)

    def restore(self, run_dir: Path) -> None:
        """Continue after the checkpoint of ``run_dir``'s last finished experience."""
        from .. import checkpoint
        self.start = checkpoint.restore(run_dir, self.strategy, self.benchmark.train_stream,
                                        self.evaluator)

    def open_loggers(self, run_dir: Path, resumed: bool = False):
        """The run's loggers (``--log``), writing into ``run_dir``, called after each epoch
        (through the progress plugin) and by the runner after each recorded experience; a
        resumed run continues after its last finished experience."""
        from ..evaluator import INITIAL
        from .loggers import ResumePoint, RunLoggers
        finished = {row["train_exp"] for row in self.evaluator.experience_rows}
        point = (ResumePoint(len(finished), self.strategy.clock.train_iterations)
                 if resumed else None)
        loggers = RunLoggers(self.config["loggers"], run_dir, self.config, point,
                             recorded=(finished | {INITIAL}) if resumed else set())
        if loggers.loggers:
            self.progress.epoch_listeners.append(loggers.epoch_finished)
        return loggers

    def fit(self, after_experience=lambda i: None) -> None:
        """Train experience by experience (joint: once on the whole stream), calling
        ``after_experience(i)`` when experience i is complete (trained and evaluated)."""
        stream = self.benchmark.train_stream
        try:
            workers = self.settings.data_workers
            # --precision: training and its evaluations; --data-workers, --image-cache:
            # reading images
            with self.precision.autocast(), reading_workers(workers), \
                    image_cache(*self.image_cache):
                if self.joint:
                    self.evaluator.expect(len(stream) - 1,
                                          sum(len(exp.dataset) for exp in stream))
                    self.progress.start_experience(0, 1, "joint")
                    self.strategy.train(list(stream), eval_streams=[])
                    after_experience(len(stream) - 1)
                    return
                for i, experience in enumerate(stream):
                    if i < self.start:
                        continue
                    self.evaluator.expect(i, len(experience.dataset))
                    extra = {}
                    if self.active and i > 0:  # labels only through the oracle
                        experience, extra["oracle"] = masked_experience(
                            experience, self.hparams.budget_per_round, self.hparams.rounds)
                    self.progress.start_experience(i, len(stream))
                    if workers:  # the training template's DataLoader
                        extra["num_workers"] = workers
                    # an active strategy's source (experience 0) picks its model on the
                    # source's test set, the stream's hold-out (LFTL, SHOT's trte=val)
                    held = [self.benchmark.test_stream[0]] if self.active and i == 0 else []
                    self.strategy.train(experience, eval_streams=held, **extra)
                    after_experience(i)
                    self.stop.check()
        finally:
            self.progress.close()


def execute(spec: RunSpec, progress: bool = False, exiting_after: bool = False,
            resume: Path | None = None, run_dir: Path | None = None):
    """Run ``spec`` and return the stored :class:`clplatform.store.Run`. ``exiting_after``
    (the command line): after a stop signal, further signals are ignored while the last
    records are written. ``resume``: continue the run in that directory; ``run_dir``: the
    directory of a new run (it must not exist; default: a fresh one under ``--out``).

    The run holds its directory's lock (:func:`clplatform.store.run_lock`) from start to
    end: a second process refuses to resume a run that is still going."""
    with contextlib.ExitStack() as held:
        return _execute(spec, progress, exiting_after, resume, run_dir, held)


def _execute(spec, progress, exiting_after, resume, run_dir, held: contextlib.ExitStack):
    import pandas as pd

    from .. import metrics
    from ..cache import temp_files
    from ..cache import save_traceback
    from ..evaluator import INITIAL
    from ..store import (ACCURACY_FILE, CONFIG_FILE, EXPERIENCES_FILE, ROUNDS_FILE, RUN_FILE,
                        SUMMARY_FILE,
                        hardware, json_safe, load_run, new_run_dir, release_space,
                        remove_run_dir, reserve_space, run_lock, versions, write_json,
                        write_table)

    from .. import checkpoint
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    if resume is not None:
        run_dir = Path(resume)
        held.enter_context(run_lock(run_dir))  # before anything is read: a live run refuses
        if load_run(run_dir).status == "complete":
            raise UserError(f"run {run_dir} is complete: nothing to resume")
        try:
            prepared = Prepared(spec, progress)
        except UserError as exc:
            raise UserError(f"cannot resume from {run_dir / CONFIG_FILE}: {exc}") from None
        if prepared.joint:
            raise UserError(f"strategy {spec.strategy!r} trains once on the whole stream: "
                            "nothing finished to resume from; start it again")
        if not prepared.resumable:
            raise UserError(f"strategy {spec.strategy!r} cannot be resumed (it is not "
                            "registered resumable=True)")
        prepared.restore(run_dir)
        for stale in temp_files(run_dir):  # writes a killed process left unfinished
            stale.unlink(missing_ok=True)
        reserve_space(run_dir)
        loggers = held.enter_context(_closing(prepared.open_loggers(run_dir, resumed=True)))
        record = {**load_run(run_dir).record, "status": "running", "reason": None,
                  "ended": None, "pid": os.getpid(), "host": platform.node()}
        record["resumed"] = [*record.get("resumed", []), now]
        record.pop("traceback", None)
        write_json(run_dir / RUN_FILE, record)
    else:
        prepared = Prepared(spec, progress)
        run_dir = new_run_dir(prepared.out, prepared.label, exact=run_dir)
        held.enter_context(run_lock(run_dir))
        record = {"id": run_dir.name, "status": "running", "reason": None,
                  "seed": prepared.settings.seed, "versions": versions(),
                  "hardware": hardware(prepared.settings.device), "started": now,
                  "ended": None, "command": " ".join(sys.argv),
                  "pid": os.getpid(), "host": platform.node()}
        try:
            reserve_space(run_dir)
            write_json(run_dir / CONFIG_FILE, prepared.config)
            write_json(run_dir / RUN_FILE, record)
            loggers = held.enter_context(_closing(prepared.open_loggers(run_dir)))
        except BaseException:  # a full disk: no empty or partial directory stays
            remove_run_dir(run_dir)
            raise
    prepared.stop.ignore_after_stop = exiting_after

    def finished_records() -> tuple[pd.DataFrame, pd.DataFrame, list]:
        """Accuracy, experience and round records of every finished experience."""
        evaluator = prepared.evaluator
        done = {row["train_exp"] for row in evaluator.experience_rows} | {INITIAL}
        accuracy = pd.DataFrame([r for r in evaluator.accuracy_rows if r["train_exp"] in done])
        rounds = [r for r in evaluator.round_rows if r["train_exp"] in done]
        return accuracy, pd.DataFrame(evaluator.experience_rows), rounds

    def write_records(experience: int) -> None:
        """After each finished experience, so an interrupted or failed run keeps them: the
        records, written atomically, and the checkpoint of resumable runs."""
        accuracy, experiences, rounds = finished_records()
        write_table(run_dir / ACCURACY_FILE, accuracy)
        write_table(run_dir / EXPERIENCES_FILE, experiences)
        if rounds:
            write_table(run_dir / ROUNDS_FILE, rounds)
        loggers.experience_recorded(accuracy, experiences)  # before the checkpoint: a
        # resume starts after it (a stop in between: the purge on resume hides a repeat)
        if prepared.resumable:
            checkpoint.save(run_dir, prepared.strategy, prepared.evaluator, experience)
    failure = None
    try:
        with prepared.stop:
            started = time.perf_counter()
            prepared.fit(after_experience=write_records)
            wall_seconds = time.perf_counter() - started
        accuracy, experiences, _ = finished_records()  # on disk since the last experience
        summary = {**metrics.summarize(accuracy, experiences), "wall_seconds": wall_seconds}
        write_json(run_dir / SUMMARY_FILE, json_safe(summary))
        record["status"] = "complete"
    except BaseException as exc:
        failure = exc
        record["status"] = ("interrupted" if isinstance(exc, (KeyboardInterrupt, RunInterrupted))
                            else "failed")
        record["reason"] = (f"interrupted by {exc}" if isinstance(exc, RunInterrupted)
                            else f"{type(exc).__name__}: {exc}")
        record["traceback"] = traceback.format_exc()
        if isinstance(exc, Exception) and not isinstance(exc, UserError):
            save_traceback(exc, run_dir)  # a bug: the command line names the file
        raise
    finally:
        record["ended"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        release_space(run_dir)  # room for this last record, even on a full disk
        try:
            write_json(run_dir / RUN_FILE, record)
        except UserError as exc:
            if failure is None:
                raise
            print(f"clplat: warning: {exc}", file=sys.stderr)  # the failure itself follows
    # complete and recorded as such: only an unfinished run needs its checkpoint (a model's
    # state dict can be large); deleted earlier, a kill before run.json says complete would
    # leave a run with neither; --keep-model keeps it as the final model (clplat compress)
    if not prepared.config["train"]["keep_model"]:
        (run_dir / checkpoint.CHECKPOINT_FILE).unlink(missing_ok=True)
    write_single_report(run_dir)
    return load_run(run_dir)


@contextlib.contextmanager
def _closing(loggers):
    """Close the run's loggers when the run ends, marked failed if it did not complete."""
    try:
        yield loggers
    except BaseException:
        loggers.close(failed=True)
        raise
    loggers.close()


def dry_run(spec: RunSpec) -> dict:
    """Validate and build everything a run needs (stream, backbone, strategy), train nothing,
    write nothing; returns the resolved configuration."""
    return Prepared(spec, progress=False).config


def preset_recipe(spec: RunSpec, preset: str) -> dict:
    """What ``--preset`` resolves to (``--dry-run`` with a preset): strategy, backbone and
    training settings checked as a run checks them, the stream and its options as given
    (not built: the dataset need not be at hand), and the preset's seeds."""
    from .presets import get_preset
    resolved = resolve(spec, check_stream=False)
    return {"preset": preset,
            "strategy": {"name": spec.strategy, **options_dict(resolved.hparams)},
            "stream": {"name": spec.stream, **spec.stream_options},
            "backbone": {"name": spec.backbone, **options_dict(resolved.backbone_options)},
            "train": dataclasses.asdict(resolved.settings()),
            "seeds": list(get_preset(preset).seeds)}


def write_single_report(run_dir: Path) -> None:
    """The run's own HTML report (report.html); a failure here never fails the run."""
    try:
        from clplatform.reports import build_report
        build_report([run_dir], run_dir / "report.html", title=f"clplatform run {run_dir.name}")
    except Exception as exc:  # noqa: BLE001  (the records are complete and safe)
        print(f"clplat: warning: could not write {run_dir / 'report.html'}: {exc}",
              file=sys.stderr)


def run(strategy: str | None = None, stream: str | None = None, *,
        config: str | os.PathLike | None = None, progress: bool = False, **options: Any):
    """Run one strategy on one stream from Python; returns the stored run.

    ``options``: ``backbone``, ``strategy_options``/``stream_options``/``backbone_options``
    (dicts), and the ``[train]`` settings ``epochs``, ``batch_size``, ``lr``, ``seed``,
    ``device``, ``out``; ``loggers`` (``["tensorboard", "wandb"]``, as ``--log``).
    ``config`` names a TOML file; explicit arguments win over it.
    """
    return execute(make_spec(config, strategy=strategy, stream=stream, **options),
                   progress=progress)


def resume(run_dir: str | os.PathLike, progress: bool = False, exiting_after: bool = False):
    """Continue the interrupted run in ``run_dir`` after its last finished experience, with
    its own configuration (strategies registered ``resumable=True``); returns the stored
    run. The one resume of the command line (``clplat run --resume``), sweeps and Python."""
    run_dir = Path(run_dir)
    return execute(resume_spec(run_dir), progress=progress, exiting_after=exiting_after,
                   resume=run_dir)
