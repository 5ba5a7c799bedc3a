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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .active import check_budget, masked_experience
from ..errors import UserError
from ..interrupt import RunInterrupted, StopRequest, safe_points
from ..options import build_options, build_within_memory, opt, options_dict

DEFAULT_STRATEGY = "naive"
DEFAULT_OUT = "runs"
CONFIG_TABLES = ("strategy", "stream", "backbone", "train")


@dataclass
class TrainOptions:
    """``[train]`` options; unset values come from the strategy's defaults, then these."""
    epochs: int | None = opt(None, "training epochs per experience (default: the strategy's, "
                                   "else 3)", min=1, max=10000)
    batch_size: int | None = opt(None, "training mini-batch size (default: the strategy's, "
                                       "else 32)", min=1, max=65536)
    lr: float | None = opt(None, "learning rate (default: the strategy's, else 0.003)",
                           min=0, max=100)
    seed: int = opt(0, "seed of Python, NumPy, torch and of the stream", min=0, max=2**31 - 1)
    device: str = opt("auto", "where to train", choices=("auto", "cpu", "cuda"))
    out: str = opt(DEFAULT_OUT, "folder that receives the run directory")
    flops: str = opt("sampled", "training FLOP counting: each distinct iteration once "
                     "(sampled), every operation (full), or none (off)",
                     choices=("sampled", "full", "off"))

    def validate(self) -> None:
        from ..store import check_output_folder
        check_output_folder(self.out)


GLOBAL_TRAIN_DEFAULTS = {"epochs": 3, "batch_size": 32, "lr": 0.003}


@dataclass
class RunSpec:
    """What to run: names and raw (unvalidated) options, as given by the user."""
    strategy: str = DEFAULT_STRATEGY
    stream: str = "glyphs"
    backbone: str = "vit-glyphs"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    stream_options: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def read_config_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A TOML file with ``[strategy]``, ``[stream]``, ``[backbone]``, ``[train]`` tables."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"invalid TOML in {path}: {exc}") from None
    unknown = sorted(set(data) - set(CONFIG_TABLES))
    if unknown:
        raise UserError(f"unknown table or key {unknown[0]!r} in {path}; "
                        f"valid tables: {', '.join(CONFIG_TABLES)}")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise UserError(f"{name!r} in {path} must be a table ([{name}])")
        for key, value in table.items():
            if isinstance(value, dict):
                raise UserError(f"nested table {name}.{key} in {path} is not allowed")
    return data


def make_spec(config: str | os.PathLike | None = None, *, strategy: str | None = None,
              stream: str | None = None, backbone: str | None = None,
              strategy_options: Mapping[str, Any] | None = None,
              stream_options: Mapping[str, Any] | None = None,
              backbone_options: Mapping[str, Any] | None = None,
              **train: Any) -> RunSpec:
    """Merge a config file with explicit values (explicit values win)."""
    data = read_config_file(config) if config else {}
    tables = {k: dict(data.get(k, {})) for k in CONFIG_TABLES}
    names = {k: tables[k].pop("name", None) for k in ("strategy", "stream", "backbone")}
    for key, value in names.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"[{key}] name must be a string, got {value!r}")
    spec = RunSpec()
    spec.strategy = strategy or names["strategy"] or spec.strategy
    spec.stream = stream or names["stream"] or spec.stream
    spec.backbone = backbone or names["backbone"] or spec.backbone
    # options in the file belong to the component named there; a different name on the
    # command line starts from that component's defaults
    keep = {k: (names[k] is None or names[k] == getattr(spec, k)) for k in names}
    spec.strategy_options = {**(tables["strategy"] if keep["strategy"] else {}),
                             **(strategy_options or {})}
    spec.stream_options = {**(tables["stream"] if keep["stream"] else {}),
                           **(stream_options or {})}
    spec.backbone_options = {**(tables["backbone"] if keep["backbone"] else {}),
                             **(backbone_options or {})}
    spec.train = {**tables["train"], **{k: v for k, v in train.items() if v is not None}}
    return spec


def train_options(spec: RunSpec, strategy_entry) -> tuple[TrainOptions, list[str]]:
    """The validated ``[train]`` settings of ``spec`` — what a run checks first and a sweep
    checks for every cell before any starts — and the settings given that the strategy does
    not use (registered ``unused_train``): those are left out, unchecked (``--epochs 0`` means
    nothing to a strategy that takes no epochs)."""
    unused = [k for k in strategy_entry.traits.unused_train
              if spec.train.get(k) is not None]
    used = {k: v for k, v in spec.train.items() if k not in unused}
    return build_options(TrainOptions, used, "[train]"), unused


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine")
    return device


class Prepared:
    """A validated, built run that has not started yet (no directory exists)."""

    def __init__(self, spec: RunSpec, progress: bool):
        from clplatform.strategies.base import StrategyContext, TrainSettings

        from .. import checkpoint
        from ..backbones import resolve_backbone_name
        from ..divergence import divergence_check
        from ..evaluator import Evaluator
        from ..progress import ProgressPlugin
        from clplatform.streams import StreamSource
        from clplatform.streams.common import validate_benchmark

        from ..registry import BACKBONES, STRATEGIES
        from ..seeding import seed_everything

        # names and options first: cheap checks before anything is built
        strategy_entry = STRATEGIES.get(spec.strategy)
        stream_source = StreamSource(spec.stream, spec.stream_options)
        backbone_key, backbone_opts = resolve_backbone_name(spec.backbone,
                                                            spec.backbone_options)
        backbone_entry = BACKBONES.get(backbone_key)
        train, unused = train_options(spec, strategy_entry)
        hparams = strategy_entry.make_options(spec.strategy_options, f"strategy {spec.strategy!r}")
        backbone_options = backbone_entry.make_options(backbone_opts,
                                                       f"backbone {spec.backbone!r}")
        defaults = dataclasses.asdict(strategy_entry.traits.train_defaults)
        settings = TrainSettings(
            epochs=train.epochs if train.epochs is not None else defaults["epochs"],
            batch_size=train.batch_size or defaults["batch_size"],
            lr=train.lr if train.lr is not None else defaults["lr"],
            seed=train.seed, device=resolve_device(train.device))

        seed_everything(settings.seed)
        self.benchmark = stream_source.build(train.seed)
        checkpoint.tag_samples(self.benchmark.train_stream)  # buffers are saved as sample ids
        self.backbone = backbone_entry.builder(backbone_options)
        validate_benchmark(self.benchmark, self.backbone.in_chans)
        self.info = self.benchmark.info
        self.joint = strategy_entry.traits.joint
        self.active = strategy_entry.traits.active
        self.resumable = strategy_entry.traits.resumable
        if self.active:  # labels of every target experience through rounds of queries
            check_budget(self.benchmark.train_stream, hparams.budget_per_round, hparams.rounds)
        self.start = 0  # first experience to train (after a resume: the next unfinished one)
        self.hparams = hparams
        self.evaluator = Evaluator(self.benchmark.test_stream, self.info.num_classes,
                                   settings.eval_batch_size, spec.strategy, flops=train.flops)
        self.evaluator.meter.count_every_iteration = (
            strategy_entry.traits.varying_iteration_cost)
        self.progress = ProgressPlugin(enabled=progress)
        self.stop = StopRequest()
        context = StrategyContext(self.backbone, self.info, settings,
                                  plugins=[self.progress, self.evaluator,
                                           safe_points(self.stop), divergence_check()])
        seed_everything(settings.seed)  # same model initialisation whatever was built before
        self.strategy = build_within_memory(strategy_entry.builder, context, hparams,
                                            f"strategy {spec.strategy!r}")
        self.settings = settings
        self.out = train.out
        self.config = {
            "strategy": {"name": spec.strategy, **options_dict(hparams)},
            "stream": {"name": stream_source.name, **stream_source.config(),
                       "scenario": self.info.scenario, "classes": self.info.classes,
                       "domains": self.info.domains,
                       "experiences_in_stream": len(self.benchmark.train_stream)},
            "backbone": {"name": spec.backbone, **options_dict(backbone_options)},
            "train": {**dataclasses.asdict(settings), "out": train.out,
                      "device_requested": train.device, "flops": train.flops},
        }
        self.label = f"{spec.strategy}-{stream_source.label}-s{settings.seed}"
        if unused:  # a warning, not an error: sweeps set them for every strategy at
            # once; only once everything is built, so that an error stays the one line
            print(f"clplat: warning: strategy {spec.strategy!r} does not use "
                  f"{', '.join(unused)}; its own hyper-parameters are set with --set "
                  f"(clplat list strategies -v)", file=sys.stderr)

    def restore(self, state: dict) -> None:
        """Continue after the checkpoint's experience: the model regrows what it had grown
        (dynamic heads, the strategy's own modules), then weights, plugin and optimizer
        states, records and RNG states come back."""
        from avalanche.models.dynamic_modules import avalanche_model_adaptation

        from .. import checkpoint
        done = int(state["experience"])
        experiences = list(self.benchmark.train_stream)[:done + 1]
        samples = checkpoint.Samples(self.benchmark.train_stream)
        model = self.strategy.model
        for experience in experiences:
            avalanche_model_adaptation(model, experience)
        checkpoint.restore_strategy(self.strategy, state["strategy"], samples, experiences)
        checkpoint.load_model_state(model, state["model"])
        checkpoint.restore_plugins(self.strategy, state["strategy"], samples)
        if "optimizer" in state:
            checkpoint.restore_optimizer(self.strategy, state["optimizer"])
        self.evaluator.restore(state["evaluator"])
        checkpoint.set_rng_state(state["rng"])
        self.start = done + 1

    def fit(self, after_experience=lambda i: None) -> None:
        """Train experience by experience (joint: once on the whole stream), calling
        ``after_experience(i)`` when experience i is complete (trained and evaluated)."""
        stream = self.benchmark.train_stream
        try:
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
                if self.active and i > 0:  # labels only through the oracle
                    experience, self.strategy.oracle = masked_experience(
                        experience, self.hparams.budget_per_round, self.hparams.rounds)
                self.progress.start_experience(i, len(stream))
                self.strategy.train(experience, eval_streams=[])
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
    from ..errors import save_traceback
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
        checkpoint.restore(prepared, run_dir)
        for stale in temp_files(run_dir):  # writes a killed process left unfinished
            stale.unlink(missing_ok=True)
        reserve_space(run_dir)
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
        if prepared.resumable:
            checkpoint.save(run_dir, prepared, experience)
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
    # leave a run with neither
    (run_dir / checkpoint.CHECKPOINT_FILE).unlink(missing_ok=True)
    write_single_report(run_dir)
    return load_run(run_dir)


def dry_run(spec: RunSpec) -> dict:
    """Validate and build everything a run needs (stream, backbone, strategy), train nothing,
    write nothing; returns the resolved configuration."""
    return Prepared(spec, progress=False).config


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
    ``device``, ``out``. ``config`` names a TOML file; explicit arguments win over it.
    """
    return execute(make_spec(config, strategy=strategy, stream=stream, **options),
                   progress=progress)
