"""Commands that start processes stop them on SIGTERM, SIGINT and SIGHUP.

``kill``, ``timeout``, batch schedulers and ``docker stop`` send SIGTERM, a closed terminal SIGHUP,
Ctrl-C SIGINT. Inside :func:`stopped_by_signals` each of them raises :class:`Stopped` where the
command is, so the ``with``/``finally`` blocks that own processes (a SuperLink, a deployment) stop
them by PID on the way out, as they do for any error.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SIGNALS", "Stopped", "stopped_by_signals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):
    """The command received ``signum``; a BaseException, so that ``except Exception`` lets it pass."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Raise :class:`Stopped` on SIGTERM, SIGINT or SIGHUP while the block runs (once: a second signal
    during the cleanup is ignored, so the cleanup finishes); restore the previous handlers after."""

    def handler(signum: int, _frame: object) -> None:
        for each in SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {each: signal.signal(each, handler) for each in SIGNALS}
    try:
        yield
    finally:
        for each, old in previous.items():
            signal.signal(each, old)
