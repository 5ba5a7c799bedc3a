"""Where clplatform keeps generated data and built backbones, and how files are written.

Every file is written atomically: to a temporary file in the same folder, then renamed.
A reader therefore sees the old file or the new one, never half of one.

The cache only ever holds what clplatform can rebuild: a cache file that cannot be read
(truncated, corrupt, from another version) is removed and rebuilt (:func:`read_cached`);
something that is not clplatform's (a file where the cache folder should be, a folder where
a cache file should be) is refused with a message naming it, before any work is done.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .errors import UserError


T = TypeVar("T")


def cache_root() -> Path:
    """The cache folder (``$CLPLATFORM_CACHE``, else ``~/.cache/clplatform``), not created."""
    return Path(os.environ.get("CLPLATFORM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clplatform"))


def cache_dir(*parts: str) -> Path:
    """A folder of the cache (:func:`cache_root`), created."""
    root = cache_root()
    path = Path(root, *parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way (FileExistsError, NotADirectoryError), rights
        source = "$CLPLATFORM_CACHE" if os.environ.get("CLPLATFORM_CACHE") else "default"
        raise UserError(f"cannot use the cache folder {path} ({source} cache {root}): "
                        f"{exc.strerror or exc}") from None
    return path


def cache_file(*parts: str) -> Path:
    """The path of a cache file (its folder created); something other than a file already
    there (a folder, a socket) is not the cache's to replace: a UserError naming it."""
    path = cache_dir(*parts[:-1]) / parts[-1]
    if os.path.lexists(path) and not path.is_file():
        raise UserError(f"{path} is in the way of a cache file (it is not a file); "
                        "move it away")
    return path


def read_cached(path: Path, read: Callable[[Path], T]) -> T | None:
    """``read(path)`` of the cache file ``path``, or None if there is none to use: missing,
    or unreadable (any exception of ``read``: truncated, corrupt, foreign), in which case
    it is removed with a warning so that the caller rebuilds it."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except Exception as exc:  # noqa: BLE001  (a cache file is only ever rebuilt, not trusted)
        print(f"clplat: warning: rebuilding unreadable cache file {path} "
              f"({type(exc).__name__})", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of a JSON-able object, stable across processes and machines."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _temp_file(path: Path) -> Path:
    """Create a new, empty temporary file ``.NAME.<random>.tmp`` next to ``path``. Created
    with mode 0666 less the umask, like any file the process creates (``mkstemp`` would make
    it 0600, and the rename would carry that onto shared caches and run folders)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def temp_files(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """The temporary files that atomic writes of ``name`` (a glob) left in ``folder`` (a
    process killed between creating and renaming one)."""
    return sorted(Path(folder).glob(f".{name}.*.tmp"))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Atomically; the space is reserved before anything is written, so a full disk fails
    at once. A failure (disk full, permissions) is a user-facing error naming the file, and
    the previous content stays."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            if len(data) and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fh.fileno(), 0, len(data))
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # not supported
                        raise
            fh.write(data)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically, as :func:`write_bytes` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# ----------------------------------------------------------------------------- tracebacks
TRACEBACK_FILE = "traceback.txt"


def save_traceback(exc: BaseException, folder=None):
    """Write the full traceback of ``exc`` (a bug, not a :class:`UserError`) to
    ``folder/traceback.txt`` — the run directory when there is one — or else to a new file in
    the cache (or temporary) folder, once; returns the file, also kept on ``exc`` for the
    command line to name (a second call returns it). None if nothing could be written."""
    import datetime as dt
    import tempfile
    import traceback

    if getattr(exc, "_clplat_traceback", None) is not None:
        return exc._clplat_traceback
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    candidates = []
    if folder is not None:
        candidates.append(Path(folder) / TRACEBACK_FILE)
    else:
        name = (f"clplat-traceback-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.txt")
        try:
            candidates.append(cache_dir("errors") / name)
        except OSError:
            pass
        candidates.append(Path(tempfile.gettempdir()) / name)
    for path in candidates:
        try:
            write_text(path, text)
        except (OSError, UserError):
            continue
        exc._clplat_traceback = path
        return path
    return None
