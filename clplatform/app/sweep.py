"""Sweeps: strategy x stream x seed x hyper-parameter grids, each cell an ordinary run.

``plan()`` expands the grid into cells and validates every cell's names and options before
anything runs; each cell has a fixed run directory ``OUT/<cell id>``, so running the same
sweep again skips complete cells and resumes interrupted ones (from their checkpoint).
Cells run on an executor:

- ``local``: a pool of ``workers`` processes (spawned, a fresh process per run);
- ``ray``: one Ray task per run, requesting ``threads`` CPUs (and ``gpus`` GPUs), on the
  cluster at ``address`` or on a local Ray instance started for the sweep.

Both call :func:`run_cell`, which sets the run's thread count: the same seeds and thread
counts give identical records whichever executor ran them. A run that fails, or whose
worker process dies, is recorded with its reason and tried again up to ``retries`` times;
the sweep goes on. ``OUT/sweep.json`` holds every cell's status, attempts and reasons, and
the comparison report of the sweep's runs is written to ``OUT/comparison.html``.

On a multi-node Ray cluster, workers write the runs straight into ``OUT`` when they see it
(a shared file system); otherwise each run is made in a scratch folder on its node and its
files are sent back to the driver, which writes them into ``OUT``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from .spec import RunSpec

TRAIN_KEYS = ("epochs", "batch_size", "lr")
SWEEP_FILE = "sweep.json"
REPORT_FILE = "comparison.html"
EXECUTORS = ("local", "ray")
# a local Ray instance: every core, a small object store (only run files travel through it)
LOCAL_RAY = {"num_cpus": os.cpu_count(), "object_store_memory": 256 * 2 ** 20}


@dataclass
class Cell:
    id: str
    spec: RunSpec
    grid: dict[str, str]
    status: str = "pending"        # pending | complete | failed | skipped
    attempts: int = 0
    reasons: list[str] = field(default_factory=list)
    seconds: float | None = None

    def record(self, out: Path) -> dict[str, Any]:
        return {"id": self.id, "run_dir": str(out / self.id), "strategy": self.spec.strategy,
                "stream": self.spec.stream, "seed": self.spec.train["seed"],
                "grid": self.grid, "status": self.status, "attempts": self.attempts,
                "reasons": self.reasons, "seconds": self.seconds}


def _split(text: str, flag: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise UserError(f"{flag} needs at least one value, got {text!r}")
    return list(dict.fromkeys(values))


def parse_grid(items: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """``["lr=0.1,0.01", "ewc_lambda=1,10"]`` -> ``{"lr": [...], "ewc_lambda": [...]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"--grid expects key=v1,v2,..., got {item!r}")
        if key in grid:
            raise UserError(f"--grid key {key!r} given twice")
        grid[key] = _split(values, f"--grid {key}")
    return grid


def _cell_id(strategy: str, stream_label: str, seed: int, grid: dict[str, str]) -> str:
    parts = [strategy, stream_label, f"s{seed}", *(f"{k}={v}" for k, v in grid.items())]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", "-".join(parts))


def plan(strategies: list[str], streams: list[str], seeds: list[int],
         grid: dict[str, list[str]], base: RunSpec,
         overrides: dict[str, dict[str, Any]] | None = None) -> list[Cell]:
    """Every cell of the sweep, validated (names, option names and values, training
    settings, as a run validates them) without building anything. A grid key is a training
    setting (epochs, batch_size, lr), ``stream.KEY``, ``backbone.KEY``, or a strategy
    hyper-parameter — applied to the strategies that have it
    (others run once per remaining combination). ``overrides``: per strategy, a preset's
    values (a hyper-parameter of that name, else a training setting) under ``base`` and
    the grid."""
    import itertools

    from ..registry import STRATEGIES
    from .spec import resolve
    entries = {name: STRATEGIES.get(name) for name in strategies}
    strategy_keys = [k for k in grid if k not in TRAIN_KEYS and "." not in k]
    for key in strategy_keys:
        if not any(key in _option_names(e) for e in entries.values()):
            raise UserError(f"--grid {key}: not a training setting, stream./backbone. option "
                            f"or hyper-parameter of {', '.join(strategies)}")
    for key in grid:
        if "." in key and key.split(".", 1)[0] not in ("stream", "backbone"):
            raise UserError(f"--grid {key}: a dotted key starts with stream. or backbone.")
    for key in base.strategy_options:
        if not any(key in _option_names(e) for e in entries.values()):
            raise UserError(f"--set {key}: not a hyper-parameter of {', '.join(strategies)}")
    cells: list[Cell] = []
    for strategy, stream, seed in itertools.product(strategies, streams, seeds):
        names = _option_names(entries[strategy])
        keys = [k for k in grid if k not in strategy_keys or k in names]
        preset = (overrides or {}).get(strategy, {})
        for values in itertools.product(*(grid[k] for k in keys)):
            chosen = dict(zip(keys, values))
            spec = dataclasses.replace(
                base, strategy=strategy, stream=stream,
                strategy_options={**{k: v for k, v in preset.items() if k in names},
                                  **{k: v for k, v in base.strategy_options.items()
                                     if k in names},
                                  **{k: v for k, v in chosen.items() if k in names}},
                stream_options={**base.stream_options,
                                **{k[7:]: v for k, v in chosen.items()
                                   if k.startswith("stream.")}},
                backbone_options={**base.backbone_options,
                                  **{k[9:]: v for k, v in chosen.items()
                                     if k.startswith("backbone.")}},
                train={**{k: v for k, v in preset.items() if k not in names},
                       **base.train, "seed": seed,
                       **{k: v for k, v in chosen.items() if k in TRAIN_KEYS}})
            resolved = resolve(spec)  # the checks a run makes first
            cells.append(Cell(_cell_id(strategy, resolved.stream.label, seed, chosen), spec,
                              chosen))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise UserError("two cells of the sweep would share a run directory (streams with "
                        "the same name?)")
    return cells


def _option_names(entry) -> set[str]:
    return {f.name for f in dataclasses.fields(entry.options)} if entry.options else set()


# ----------------------------------------------------------------------------- one cell
def _spec_dict(spec: RunSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def run_cell(spec: dict[str, Any], run_dir: str, threads: int,
             files: dict[str, bytes] | None = None, ship: bool = False) -> dict[str, Any]:
    """Run (or finish) one cell in this process: skip it if complete, resume it from its
    checkpoint if it has one, otherwise start it afresh in ``run_dir``. ``files``: the run
    directory's files to start from (a node that does not see the sweep's folder);
    ``ship``: send the run directory's files back. Returns status, reason, seconds."""
    import torch

    from ..checkpoint import CHECKPOINT_FILE
    from ..interrupt import RunInterrupted
    from ..store import RUN_FILE, load_run, run_lock
    from .runner import execute, resume
    torch.set_num_threads(threads)
    path = Path(run_dir)
    if files is not None:
        path = Path(tempfile.mkdtemp(prefix="clplat-cell-")) / path.name
        _write_files(path, files)
    started = time.perf_counter()
    result: dict[str, Any] = {"status": "complete", "reason": None}
    try:
        run = load_run(path) if (path / RUN_FILE).is_file() else None
        if run is not None and run.status == "complete":
            result["status"] = "skipped"
        elif run is not None and (path / CHECKPOINT_FILE).is_file():
            resume(path)
        else:
            if run is not None:  # nothing finished: start again (unless it is still going)
                with run_lock(path):
                    shutil.rmtree(path)
            execute(RunSpec(**spec), progress=False, run_dir=path)
    except (Exception, RunInterrupted) as exc:  # noqa: BLE001  (recorded; the sweep goes on)
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}".strip()}
    result["seconds"] = time.perf_counter() - started
    if ship and path.is_dir():
        result["files"] = _read_files(path)
    return result


def _read_files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by relative name (a run directory travelling between nodes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _write_files(path: Path, files: dict[str, bytes]) -> None:
    from ..cache import atomic_path
    for name, data in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(data)


# ----------------------------------------------------------------------------- executors
def die_with_parent(parent: int) -> None:
    """In a worker process: be sent SIGTERM when the process that started it dies (even by
    SIGKILL), so no orphan keeps training into the sweep's folder; SIGTERM stops a run at its
    next safe point, marked interrupted (resumable). Linux only (``prctl``), a no-op
    elsewhere."""
    import ctypes
    import signal
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call: nothing would be sent
        os.kill(os.getpid(), signal.SIGTERM)


class LocalExecutor:
    """A process pool; a new process per run (no state or memory carried over). The workers
    die with the driver (:func:`die_with_parent`)."""

    def __init__(self, workers: int, task: Callable[..., dict] = run_cell):
        self.workers = workers
        self.task = task

    def run(self, tasks: list[tuple[Cell, dict]],
            done: Callable[[Cell, dict], dict | None]) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool
        pending = list(tasks)
        while pending:
            pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                       initializer=die_with_parent, initargs=(os.getpid(),),
                                       max_tasks_per_child=1)
            futures = {pool.submit(self.task, **kwargs): cell for cell, kwargs in pending}
            pending = []
            try:
                for future in as_completed(futures):
                    cell = futures[future]
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        result = {"status": "failed",
                                  "reason": "worker process died (killed or out of memory)"}
                    retry = done(cell, result)
                    if retry is not None:
                        pending.append((cell, retry))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """One Ray task per run (``max_calls=1``: a fresh worker process per run)."""

    def __init__(self, workers: int | None, address: str | None, threads: int, gpus: float):
        self.workers, self.address, self.threads, self.gpus = workers, address, threads, gpus

    def run(self, tasks: list[tuple[Cell, dict]],
            done: Callable[[Cell, dict], dict | None]) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'clplatform[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         **({} if self.address else LOCAL_RAY))
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot reach the Ray cluster at {self.address}: "
                                f"{str(exc).splitlines()[0]}") from None
        try:
            self._run(ray, tasks, done)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, tasks, done) -> None:
        remote = ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_calls=1,
                            max_retries=0)(ray_cell)
        queue = list(tasks)
        running: dict[Any, tuple[Cell, dict]] = {}
        limit = self.workers or len(queue)
        while queue or running:
            while queue and len(running) < limit:
                cell, kwargs = queue.pop(0)
                running[remote.remote(**kwargs)] = (cell, kwargs)
            ready, _ = ray.wait(list(running), num_returns=1)
            cell, _ = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                died = isinstance(exc, (ray.exceptions.WorkerCrashedError,
                                        ray.exceptions.NodeDiedError))
                result = {"status": "failed",
                          "reason": ("worker process died" if died else "Ray task failed") +
                          f" ({type(exc).__name__}: {first})"}
            retry = done(cell, result)
            if retry is not None:
                queue.append((cell, retry))


# ----------------------------------------------------------------------------- the sweep
@dataclass
class SweepOptions:
    executor: str = "local"
    workers: int | None = None
    threads: int | None = None       # per run; default: the cores / workers
    gpus: float = 0.0                # per run (ray)
    address: str | None = None       # ray: an existing cluster
    retries: int = 1


def run_sweep(cells: list[Cell], out: str | os.PathLike, opts: SweepOptions,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)):
    """Run every cell not yet complete, record the sweep in OUT/sweep.json and write the
    comparison report; returns (cells, the loaded runs, the report's path) — None, None
    when no run completed."""
    from ..store import output_folder, write_json
    if opts.executor not in EXECUTORS:
        raise UserError(f"unknown --executor {opts.executor!r}: choose from "
                        f"{', '.join(EXECUTORS)}")
    if opts.retries < 0:
        raise UserError("--retries must be >= 0")
    workers = opts.workers or 1
    if workers < 1:
        raise UserError("--workers must be >= 1")
    out = output_folder(out).resolve()
    threads = opts.threads or max(1, (os.cpu_count() or 1) // workers)
    marker = out / f".sweep-{uuid.uuid4().hex}"  # a worker that sees it shares OUT
    marker.touch()
    state_file = out / SWEEP_FILE
    total = len(cells)
    finished = 0

    def save() -> None:
        write_json(state_file, {"executor": opts.executor, "workers": workers,
                                "threads_per_run": threads, "retries": opts.retries,
                                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "cells": [c.record(out) for c in cells]})

    def kwargs_for(cell: Cell) -> dict:
        kwargs = {"spec": _spec_dict(cell.spec), "run_dir": str(out / cell.id),
                  "threads": threads}
        if opts.executor == "ray":
            kwargs["shared_check"] = str(marker)
            # a node of a cluster may not see OUT: it gets the driver's copy of the run
            # directory to resume from (a local Ray instance always sees OUT: nothing sent)
            path = out / cell.id
            if opts.address and path.is_dir():
                kwargs["files"] = _read_files(path)
        return kwargs

    def done(cell: Cell, result: dict) -> dict | None:
        nonlocal finished
        cell.attempts += 1
        files = result.pop("files", None)
        if files:
            _write_files(out / cell.id, files)
        cell.seconds = result.get("seconds")
        if result["status"] in ("complete", "skipped"):
            cell.status = result["status"]
            finished += 1
            log(f"[{finished}/{total}] {cell.id}: {cell.status}"
                + (f" ({cell.seconds:.0f} s)" if cell.status == "complete" else ""))
            save()
            return None
        cell.reasons.append(result["reason"])
        if cell.attempts <= opts.retries:
            log(f"[{finished}/{total}] {cell.id}: failed, trying again "
                f"({cell.attempts}/{opts.retries}): {result['reason']}")
            save()
            return kwargs_for(cell)
        cell.status = "failed"
        finished += 1
        log(f"[{finished}/{total}] {cell.id}: failed: {result['reason']}")
        save()
        return None

    try:
        save()
        if opts.executor == "local":
            executor: Any = LocalExecutor(workers)
        else:
            executor = RayExecutor(opts.workers, opts.address, threads, opts.gpus)
        executor.run([(c, kwargs_for(c)) for c in cells], done)
    finally:
        marker.unlink(missing_ok=True)
        save()
    complete = [out / c.id for c in cells if c.status in ("complete", "skipped")]
    if not complete:
        return cells, None, None
    from clplatform.reports import build_report
    runs, report = build_report(complete, out / REPORT_FILE, title=f"clplatform sweep {out.name}")
    return cells, runs, report


def ray_cell(spec: dict[str, Any], run_dir: str, threads: int, shared_check: str,
             files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """A Ray task: in place when this node sees the sweep's folder, otherwise in a scratch
    folder, starting from the driver's copy of the run directory and sending it back."""
    if Path(shared_check).exists():
        return run_cell(spec, run_dir, threads)
    return run_cell(spec, run_dir, threads, files=files or {}, ship=True)
