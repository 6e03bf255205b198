"""Child processes that cannot outlive the stack that started them, and stop signals taken as one request.

``learnloop dev`` and ``demo`` run a broker, Redis and workers as children. Each child gets a
session of its own (Ctrl-C in the terminal reaches only the parent, which stops them in order),
its output goes to a log file, and on Linux the kernel kills it when the parent dies — even by
SIGKILL, when no handler of ours can run — so a stack is never left running without its owner.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to SIGKILL the child when its parent dies; ``None`` off Linux.

    The kernel ties the signal to the *thread* that forked, so children are spawned from the main
    thread (as the CLI and the test fixtures do), never from a short-lived worker thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would kill us
            os._exit(1)

    return preexec


def spawn(
    argv: Sequence[str], *, log_path: Path | None, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, stdout and stderr appended to ``log_path``, dying with us."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True, preexec_fn=_die_with_parent(),
        )
    finally:
        if not isinstance(out, int):
            out.close()


def terminate(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each process, wait up to ``timeout`` in all, then SIGKILL what is left of each session.

    The kill goes to the whole process group, so whatever a child started goes with it.
    """
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP as one stop request, whatever state the parent left them in.

    A job started in the background by a script inherits SIGINT as ignored; installing our own
    handler undoes that, so ``kill -INT`` stops such a job as Ctrl-C stops a foreground one.
    The handler only records the signal: the caller polls :attr:`requested` and stops in order,
    and a second signal while it does cannot cut the shutdown short (as a KeyboardInterrupt would).

    >>> with StopSignals() as stop:
    ...     stop.requested
    False
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._saved: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return self.received.name if self.received is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._saved.clear()
