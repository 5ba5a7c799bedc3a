"""Where clplatform keeps generated data and built backbones, and how files are written.

Every file is written atomically: to a temporary file in the same folder, then renamed.
A reader therefore sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$CLPLATFORM_CACHE``, else ``~/.cache/clplatform``), created."""
    root = os.environ.get("CLPLATFORM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clplatform")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
