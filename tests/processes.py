"""Which processes a test started, read from /proc, so that none outlives the test.

A process is named by its pid and its start time (in clock ticks since boot): a pid can be
reused once its process is gone, the pair cannot, so a cleanup never kills a stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")
Identity = tuple[int, int]  # (pid, start time)


def has_proc() -> bool:
    return (PROC / "self" / "stat").exists()


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of ``pid``; ``None`` when it is gone."""
    try:
        data = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def identity(pid: int) -> Identity | None:
    st = _stat(pid)
    return (pid, st[2]) if st else None


def running(ident: Identity) -> bool:
    """Whether that very process still runs (a zombie, dead but not yet reaped, does not)."""
    st = _stat(ident[0])
    return st is not None and st[2] == ident[1] and st[0] not in "ZXx"


def children(pid: int) -> set[Identity]:
    """The running children of ``pid``: from each of its threads' ``children`` file, else a scan of /proc."""
    try:
        listed = [c for task in (PROC / str(pid) / "task").iterdir() for c in (task / "children").read_text().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN, or a thread that just ended
        listed = [e.name for e in PROC.iterdir() if e.name.isdigit()]
    except OSError:
        return set()
    out = set()
    for name in listed:
        st = _stat(int(name))
        if st is not None and st[1] == pid and st[0] not in "ZXx":
            out.add((int(name), st[2]))
    return out


def descendants(pid: int) -> set[Identity]:
    """Every running process below ``pid`` (children, their children, ...)."""
    found: set[Identity] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def kill(idents: set[Identity]) -> None:
    """SIGKILL each process that is still the one identified (its own process group with it)."""
    for ident in idents:
        if running(ident):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(ident[0]) == ident[0]:
                    os.killpg(ident[0], signal.SIGKILL)
                else:
                    os.kill(ident[0], signal.SIGKILL)


def wait_gone(idents: set[Identity], timeout: float) -> set[Identity]:
    """Wait until none of ``idents`` runs; returns those still running at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := {i for i in idents if running(i)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def describe(idents: set[Identity]) -> str:
    def cmd(pid: int) -> str:
        try:
            return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            return "?"

    return "; ".join(f"{pid} {cmd(pid)}" for pid, _ in sorted(idents))
