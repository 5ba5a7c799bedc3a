"""The one exception type for mistakes a user can make.

Anything raised as :class:`UserError` reaches the command line as one line on stderr and
exit status 2; every other exception is a bug in clplatform (or in a plugged-in component).
"""


class UserError(Exception):
    """A bad option, unknown name, malformed file or config: the user can fix it."""


TRACEBACK_FILE = "traceback.txt"


def save_traceback(exc: BaseException, folder=None):
    """Write the full traceback of ``exc`` (a bug, not a :class:`UserError`) to
    ``folder/traceback.txt`` — the run directory when there is one — or else to a new file in
    the cache (or temporary) folder, once; returns the file, also kept on ``exc`` for the
    command line to name (a second call returns it). None if nothing could be written."""
    import datetime as dt
    import os
    import tempfile
    import traceback
    from pathlib import Path

    if getattr(exc, "_clplat_traceback", None) is not None:
        return exc._clplat_traceback
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    candidates = []
    if folder is not None:
        candidates.append(Path(folder) / TRACEBACK_FILE)
    else:
        from .cache import cache_dir
        name = (f"clplat-traceback-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.txt")
        try:
            candidates.append(cache_dir("errors") / name)
        except OSError:
            pass
        candidates.append(Path(tempfile.gettempdir()) / name)
    for path in candidates:
        try:
            from .cache import write_text
            write_text(path, text)
        except (OSError, UserError):
            continue
        exc._clplat_traceback = path
        return path
    return None
