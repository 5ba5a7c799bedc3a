"""The run store: one directory per run, and :func:`load_run` to read it back.

A run directory holds
- ``run.json``: the run record (status running/complete/failed, reason, seed, versions,
  hardware, start/end times),
- ``config.json``: the fully resolved configuration,
- ``accuracy.csv``, ``experiences.csv``: the records (see :mod:`clplatform.evaluator`),
  and ``rounds.csv`` for active strategies (accuracy after each query-and-adapt round),
- ``summary.json``: the derived metrics.
Every file is written atomically; ``run.json`` is written first (status ``running``) and last
(``complete`` or ``failed``), so a directory is never silently partial. Every file is read
back through its schema (:mod:`clplatform.records`).
"""
from __future__ import annotations

import json
import math
import os
import platform
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .cache import write_bytes, write_json, write_text
from .errors import UserError
from .records import check_json, check_table

RUN_FILE, CONFIG_FILE, SUMMARY_FILE = "run.json", "config.json", "summary.json"
# space held for the last update of run.json, released just before it (a full disk still
# gets the run marked failed with its reason)
RESERVE_FILE, RESERVE_BYTES = ".reserve", 64 * 1024
ACCURACY_FILE, EXPERIENCES_FILE, ROUNDS_FILE = "accuracy.csv", "experiences.csv", "rounds.csv"


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for dist in ("clplatform", "torch", "avalanche-lib", "timm"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def hardware(device: str) -> dict[str, Any]:
    import torch
    info = {"machine": platform.machine(), "system": platform.system(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def check_output_folder(out: str | os.PathLike, flag: str = "--out") -> None:
    """An empty name would silently mean the current directory: refused."""
    if not str(out).strip():
        raise UserError(f"{flag} is empty: name a folder (e.g. {flag} runs)")


def output_folder(out: str | os.PathLike, flag: str = "--out") -> Path:
    """``out``, created if missing; an error naming it if it is empty, cannot be created or
    written."""
    check_output_folder(out, flag)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"output folder {out} is not writable")
    return out


def new_run_dir(out: str | os.PathLike, label: str, exact: Path | None = None) -> Path:
    """Create a fresh, uniquely named directory under ``out`` (safe against concurrent runs);
    ``exact``: that directory instead (an error if it exists)."""
    out = output_folder(out if exact is None else Path(exact).parent)
    if exact is not None:
        try:
            Path(exact).mkdir()
        except FileExistsError:
            raise UserError(f"run directory {exact} exists already") from None
        return Path(exact)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        path = out / f"{stamp}-{label}-{secrets.token_hex(3)}"
        try:
            path.mkdir()  # fails if it exists: two runs never share a directory
            return path
        except FileExistsError:
            continue


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run directory's exclusive lock for the block: a run (new or resumed) holds it
    for its whole life, so a second process refuses to train into the same directory. It is
    an ``flock`` on the directory itself: the OS releases it when the process dies, however
    it dies, and no lock file is left behind. A file system that cannot lock (some network
    file systems) leaves the directory unprotected."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    run_dir = Path(run_dir)
    try:
        fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        raise UserError(f"not a directory: {run_dir}") from None
    except OSError as exc:
        raise UserError(f"cannot open run directory {run_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run {run_dir} is in use by another process{_holder(run_dir)}: "
                            "wait for it to end or stop it") from None
        except OSError:
            pass  # no locks on this file system
        yield
    finally:
        os.close(fd)


def _holder(run_dir: Path) -> str:
    """`` (pid N on HOST)`` from the run record, when it says."""
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        return f" (pid {int(record['pid'])} on {record['host']})"
    except (OSError, ValueError, TypeError, KeyError):
        return ""


def reserve_space(run_dir: Path) -> None:
    """Set aside the space of the run record's last update (see :func:`release_space`)."""
    write_bytes(run_dir / RESERVE_FILE, bytes(RESERVE_BYTES))


def release_space(run_dir: Path) -> None:
    (run_dir / RESERVE_FILE).unlink(missing_ok=True)


def remove_run_dir(run_dir: Path) -> None:
    """A run directory that could not be set up (nothing of the run in it yet)."""
    shutil.rmtree(run_dir, ignore_errors=True)


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, NumPy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_table(path: Path, rows: list[dict[str, Any]] | pd.DataFrame) -> None:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    write_text(path, frame.to_csv(index=False))


@dataclass
class Run:
    """A run read back from its directory."""
    path: Path
    record: dict[str, Any]
    config: dict[str, Any]
    accuracy: pd.DataFrame
    experiences: pd.DataFrame
    summary: dict[str, Any]
    rounds: pd.DataFrame = None  # active strategies only; empty otherwise

    @property
    def status(self) -> str:
        """:func:`run_status` of the record (``stale`` for a killed run)."""
        return run_status(self.record)

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, status={self.status!r}, "
                f"final_accuracy={self.summary.get('final_accuracy')})")


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a run directory, checked against its schema (:mod:`.records`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"corrupt file {path}: expected a JSON object")
    return check_json(path, data)


def _read_csv(path: Path) -> pd.DataFrame:
    """A records table of a run directory (empty if absent), checked against its schema."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return pd.DataFrame()
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt records file {path}: {exc}") from None
    return check_table(path, text)


def find_run_dirs(paths: list[str | os.PathLike]) -> list[Path]:
    """Run directories among ``paths``: each is a run directory or a folder holding some."""
    if not paths:
        raise UserError("no run directory given")
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"no such run directory or folder: {path}")
        if not path.is_dir():
            raise UserError(f"not a directory: {path}")
        if (path / RUN_FILE).is_file():
            found.append(path)
            continue
        inside = sorted(p.parent for p in path.glob(f"**/{RUN_FILE}")
                        if not is_compression(p.parent))
        if not inside:
            raise UserError(f"no run directory in {path} (no {RUN_FILE} below it)")
        found.extend(inside)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


COMPRESS_DIR, COMPRESSION_FILE = "compress", "compression.json"


def is_compression(path: Path) -> bool:
    """A child run of ``clplat compress`` (``RUN_DIR/compress/<method>-<ratio>/``): shown
    with its parent, not as a run of its own."""
    return path.parent.name == COMPRESS_DIR and (path.parent.parent / RUN_FILE).is_file()


def load_compressions(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The summaries (``compression.json``) of the run's compressed children, by name."""
    found = []
    for path in sorted(Path(run_dir).glob(f"{COMPRESS_DIR}/*/{COMPRESSION_FILE}")):
        found.append({"child": path.parent.name, **_read_json(path)})
    return found


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def run_status(record: dict[str, Any]) -> str:
    """The recorded status, or ``stale`` for a run recorded as running whose process (on this
    host) is gone — killed without a chance to say so (SIGKILL, power loss)."""
    status = record.get("status", "unknown")
    if status == "running" and record.get("host") == platform.node() and \
            isinstance(record.get("pid"), int) and not _process_alive(record["pid"]):
        return "stale"
    return status


def list_runs(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """One row per run directory under ``paths``: id, status, strategy, stream, seed,
    experiences done / in the stream, final accuracy, start time. A run whose files do not
    fit their schema is listed with status ``corrupt`` and the problem as its reason."""
    rows = []
    for path in find_run_dirs(paths):
        try:
            run = load_run(path)
        except UserError as exc:
            rows.append({"run": str(path), "status": "corrupt", "reason": str(exc)})
            continue
        stream = run.config["stream"]
        rows.append({
            "run": str(path), "status": run.status,
            "strategy": run.config["strategy"]["name"], "stream": stream["name"],
            "seed": run.record.get("seed"), "experiences": len(run.experiences),
            "of": stream["experiences_in_stream"],
            "final_accuracy": run.summary.get("final_accuracy"),
            "started": run.record.get("started"), "reason": run.record.get("reason")})
    columns = ["run", "status", "strategy", "stream", "seed", "experiences", "of",
               "final_accuracy", "started", "reason"]
    return pd.DataFrame(rows, columns=columns)


def load_run(path: str | os.PathLike) -> Run:
    """Read a run directory written by :func:`clplatform.run` or ``clplat run``."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"not a directory: {path}")
    if not (path / RUN_FILE).is_file():
        raise UserError(f"not a run directory (no {RUN_FILE}): {path}")
    record = _read_json(path / RUN_FILE)
    if record.get("kind") == "compress":
        raise UserError(f"{path} is a compression of run {record.get('parent')}: its records "
                        f"show in that run's report")
    config = _read_json(path / CONFIG_FILE)
    summary = _read_json(path / SUMMARY_FILE) if (path / SUMMARY_FILE).is_file() else {}
    return Run(path, record, config, _read_csv(path / ACCURACY_FILE),
               _read_csv(path / EXPERIENCES_FILE), summary, _read_csv(path / ROUNDS_FILE))


__all__ = ["Run", "load_run", "find_run_dirs", "list_runs", "new_run_dir", "output_folder",
           "run_lock", "write_json", "write_table", "json_safe"]
