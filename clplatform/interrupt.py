"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (pre-emption).

The first signal asks the run to stop at the next safe point — the end of the current
training iteration or between experiences — so the records of every finished experience are
kept and the run is marked ``interrupted``; a second signal stops at once. The command exits
with 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""
from __future__ import annotations

import signal
import sys
import threading


class RunInterrupted(BaseException):
    """A run stopped by a signal (``signum``). A BaseException like KeyboardInterrupt, but not
    one (click would turn that into a bare abort and lose the signal)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Installs the SIGINT/SIGTERM handlers for the duration of a run (main thread only;
    elsewhere, e.g. a worker thread, nothing is installed and ``check`` never raises)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, object] = {}
        # the command line sets it: once a stop is under way the process only writes its
        # last records and exits, so later signals are ignored instead of cutting that short
        self.ignore_after_stop = False

    def _handle(self, signum, _frame) -> None:
        if self.requested is not None:
            raise RunInterrupted(signum)
        self.requested = signum
        print(f"clplat: {signal.Signals(signum).name} received: stopping at the next safe "
              "point (send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        stopping = self.requested is not None and self.ignore_after_stop
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if stopping else handler)
        self._previous.clear()

    def check(self) -> None:
        """Raise :class:`RunInterrupted` if a stop was requested (a safe point)."""
        if self.requested is not None:
            raise RunInterrupted(self.requested)


def safe_points(stop: StopRequest):
    """An Avalanche plugin making the end of every training iteration a safe point (built on
    demand: importing this module must not import Avalanche)."""
    from avalanche.core import SupervisedPlugin

    class SafePoints(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kwargs):
            stop.check()
    return SafePoints()
