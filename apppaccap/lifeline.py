"""Helper processes end with the service, however the service ends.

The service starts helpers (the attribution fast path, the trigger gate, bulk writers for
file ingest). A clean stop ends them; but a service killed with SIGKILL, or crashing, runs
no cleanup. Each helper therefore asks the kernel to kill it when its parent dies
(Linux prctl PR_SET_PDEATHSIG, through ctypes) and also checks that its parent is still
the process that started it (`parent_gone()`, for the moment before the prctl and for
systems without it).

PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process:
helpers started from a request thread would be killed as soon as that request was
answered. `spawn()` therefore forks every helper from one thread that lives as long as
the process.

Standard library only: the gate helper (triggers/gate_helper.py) imports this module.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future

PARENT_ENV = "APPPACCAP_PARENT_PID"  # the service's pid, as the helper should see it
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """In a helper, first thing: be sent `sig` when the service dies; exit at once if it
    already has. True when the kernel will do it (Linux), False: poll parent_gone()."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if parent_gone():  # died before the prctl took effect
        os._exit(0)
    return armed


def parent_gone() -> bool:
    """True when the process that started this helper has ended (we were re-parented)."""
    want = os.environ.get(PARENT_ENV, "")
    return want.isdigit() and os.getppid() != int(want)


class _Spawner:
    """Runs Popen on one long-lived thread (see the module's note on PR_SET_PDEATHSIG)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def popen(self, argv, **kwargs) -> subprocess.Popen:
        if threading.current_thread() is self._thread:
            return subprocess.Popen(argv, **kwargs)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="apppaccap-spawner",
                                                daemon=True)
                self._thread.start()
        fut: Future = Future()
        self._queue.put((argv, kwargs, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            argv, kwargs, fut = self._queue.get()
            try:
                fut.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)


_SPAWNER = _Spawner()


def spawn(argv, **kwargs) -> subprocess.Popen:
    """subprocess.Popen for a helper: forked from the long-lived spawner thread, with the
    service's pid in its environment for parent_gone()."""
    env = dict(kwargs.pop("env", None) or os.environ)
    env[PARENT_ENV] = str(os.getpid())
    return _SPAWNER.popen(argv, env=env, **kwargs)
