"""The stop request of a training run (:mod:`flare_seg.training.stopping`), signal by signal; the
whole path (a real SIGTERM, a checkpoint at that step, exit 143, an exact resume) is in
``tests/test_crash.py``."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from flare_seg.training.stopping import StopRequest


def test_the_first_signal_asks_to_stop_and_the_second_acts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second signal: Python's own SIGINT handler
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGINT) is before


def test_an_ignored_sigint_stays_ignored_and_a_worker_thread_changes_nothing():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job a script put in the background
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
            assert signal.getsignal(signal.SIGTERM) == stop._handle
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []

    def worker():
        with StopRequest():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL]
