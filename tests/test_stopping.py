"""The stop request of a training run (:mod:`flare_seg.training.stopping`), signal by signal; the
whole path (a real SIGTERM, a checkpoint at that step, exit 143, an exact resume) is in
``tests/test_crash.py``. Each scenario runs in a fresh interpreter: real signals sent inside the
test runner would meet whatever handlers and threads earlier tests left there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, returncode: int = 0) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with this checkout importable; it must end with ``returncode``."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == returncode, (done.returncode, done.stderr)
    return done


def test_the_first_signal_asks_to_stop_and_the_second_acts_at_once():
    done = _run("""
        import os, signal
        from flare_seg.training.stopping import StopRequest
        before = signal.getsignal(signal.SIGINT)
        with StopRequest() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.name == "SIGTERM"
            try:  # a second signal: Python's own SIGINT handler
                os.kill(os.getpid(), signal.SIGINT)
                raise AssertionError("the second signal did not act")
            except KeyboardInterrupt:
                pass
        assert signal.getsignal(signal.SIGINT) is before
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.name == "SIGINT"
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGINT) is before
        print("ok")
    """)
    assert done.stdout.strip() == "ok" and "SIGTERM: stopping after this step" not in done.stdout


def test_a_second_sigterm_ends_the_process_as_sigterm_does():
    done = _run("""
        import os, signal
        from flare_seg.training.stopping import StopRequest
        with StopRequest():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            print("survived")
    """, returncode=-15)
    assert "survived" not in done.stdout


def test_an_ignored_sigint_stays_ignored_and_a_worker_thread_changes_nothing():
    _run("""
        import os, signal, threading
        from flare_seg.training.stopping import StopRequest
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job a script put in the background
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
            assert signal.getsignal(signal.SIGTERM) == stop._handle
        seen = []
        def worker():
            with StopRequest():
                seen.append(signal.getsignal(signal.SIGTERM))
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen == [signal.SIG_DFL], seen
    """)
