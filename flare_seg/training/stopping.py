"""Stopping a training run cleanly: ``kill <pid>`` (SIGTERM) or Ctrl-C (SIGINT) during training
finishes the step in progress, writes a checkpoint at that step and ends the run, so that
``--resume`` continues exactly where it stopped (a queue's pre-emption, ``docker stop`` and a
user's Ctrl-C all lose at most one step). A second signal acts at once, as it would without this.

SIGINT is left alone where the process inherited it ignored (a job started in the background by a
script: there Ctrl-C was never meant to reach it); SIGTERM is caught unless its handler was set
outside Python (``signal.getsignal`` gives None: it could not be put back). Handlers can only be
installed from the main thread; elsewhere (a training run in a worker thread) the signals keep
their usual meaning and the run stops only when it is done.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager: while inside, the first SIGTERM/SIGINT sets :attr:`signal` (its number)
    instead of ending the process; the training loop polls it after every step."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous is None or (signum == signal.SIGINT and previous == signal.SIG_IGN):
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # asked twice: do what the signal would have done
            self._restore()
            signal.raise_signal(signum)
            return
        self.signal = signum
        log.warning("%s: stopping after this step with a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)
