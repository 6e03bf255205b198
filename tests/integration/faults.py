"""Faults on cue for integration tests: a TCP proxy in front of Redis that cuts connections.

The proxy parses the commands each client sends (RESP arrays) and passes them, and the
replies, through unchanged. During a *cut*, a connection that sends a command is closed
before that command reaches Redis, unless the test spares it; connection set-up (HELLO,
AUTH, CLIENT, SELECT) always goes through, so a spared command works on a new connection
too. A cut starts now (:meth:`RedisFaultProxy.cut`) or when a chosen command arrives
(:meth:`RedisFaultProxy.cut_when`); that command is not forwarded either, so a transaction
it belongs to (MULTI ... EXEC) is discarded by Redis: the commit fails. During a *freeze*
(:meth:`RedisFaultProxy.freeze`) commands are held, not refused, as a stopped server holds them.

A refused command fails at once in redis-py ("Connection closed by server"): it does not
retry a command whose connection closed after it was sent.

>>> take_command(bytearray(b"*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n*1"))
(20, (b'GET', b'k'))
>>> take_command(bytearray(b"*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\n")) is None
True
>>> command_is("set", ":state:")((b"SET", b"p:state:t:0", b"...")), command_is("SET")((b"GET", b"k"))
(True, False)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from streams.loopthread import LoopThread

Command = tuple[bytes, ...]
Match = Callable[[Command], bool]

_SETUP = frozenset({b"HELLO", b"AUTH", b"CLIENT", b"SELECT"})


def command_is(name: str, key_contains: str | None = None) -> Match:
    """The command ``name`` (any case), on a key that contains ``key_contains`` when given."""
    wanted, part = name.upper().encode(), key_contains.encode() if key_contains is not None else None

    def match(cmd: Command) -> bool:
        if not cmd or cmd[0].upper() != wanted:
            return False
        return part is None or (len(cmd) > 1 and part in cmd[1])

    return match


def any_of(*matches: Match) -> Match:
    return lambda cmd: any(m(cmd) for m in matches)


def nothing(cmd: Command) -> bool:
    return False


def take_command(buf: bytearray) -> tuple[int, Command] | None:
    """The first complete command in ``buf``: (its length in bytes, its arguments); None while incomplete."""
    end = buf.find(b"\r\n")
    if end < 0:
        return None
    if buf[:1] != b"*":  # an inline command
        return end + 2, tuple(bytes(buf[:end]).split())
    pos, args = end + 2, []
    for _ in range(int(buf[1:end])):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        size = int(buf[pos + 1 : end])  # after the '$'
        start = end + 2
        if len(buf) < start + size + 2:
            return None
        args.append(bytes(buf[start : start + size]))
        pos = start + size + 2
    return pos, tuple(args)


class RedisFaultProxy:
    """Listens on a free loopback port (:attr:`url`) and forwards to Redis at ``host:port``.

    Runs on a thread of its own, so a test may block (a subprocess, a sleep) while the proxy serves.
    """

    def __init__(self, host: str, port: int, *, path: str = "/0") -> None:
        self.upstream = (host, port)
        self._path = path
        self.refused: Counter[str] = Counter()  # commands refused during cuts, by name
        self.triggered = threading.Event()  # set when a cut_when trigger fired
        self._lock = threading.Lock()
        self._cut_until = 0.0
        self._frozen_until = 0.0
        self._spare: Match = nothing
        self._trigger: tuple[Match, float, Match] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner = LoopThread("redis-fault-proxy")
        self._server = self._runner.call(self._listen())
        self.port = int(self._server.sockets[0].getsockname()[1])

    @classmethod
    def in_front_of(cls, url: str) -> RedisFaultProxy:
        """A proxy for the Redis at ``url`` (``redis://host:port/db``); its :attr:`url` keeps the db."""
        u = urlsplit(url)
        return cls(u.hostname or "127.0.0.1", u.port or 6379, path=u.path or "/0")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._path}"

    def cut(self, seconds: float, *, spare: Match = nothing) -> None:
        """For ``seconds`` from now, close every connection that sends a command ``spare`` does not match."""
        with self._lock:
            self._cut_until, self._spare = time.monotonic() + seconds, spare

    def cut_when(self, trigger: Match, seconds: float, *, spare: Match = nothing) -> None:
        """Once, when a command matching ``trigger`` arrives: refuse it, and :meth:`cut` for ``seconds``."""
        with self._lock:
            self._trigger = (trigger, seconds, spare)
            self.triggered.clear()

    def freeze(self, seconds: float) -> None:
        """For ``seconds`` from now, hold every command (set-up included) without answering or closing."""
        with self._lock:
            self._frozen_until = time.monotonic() + seconds

    def heal(self) -> None:
        """End any cut or freeze now and disarm any trigger."""
        with self._lock:
            self._cut_until, self._frozen_until, self._trigger = 0.0, 0.0, None

    def close(self) -> None:
        if not self._runner.closed:
            self._runner.call(self._shutdown())
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- on the proxy's loop ---------------------------------------------------------------

    def _refuse(self, cmd: Command) -> bool:
        name = cmd[0].upper() if cmd else b""
        now = time.monotonic()
        with self._lock:
            if self._trigger is not None and self._trigger[0](cmd):
                _, seconds, self._spare = self._trigger
                self._trigger, self._cut_until = None, now + seconds
                self.triggered.set()
            elif name in _SETUP or now >= self._cut_until or self._spare(cmd):
                return False
            self.refused[name.decode(errors="replace")] += 1
            return True

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(client_r, client_w)
        except asyncio.CancelledError:
            pass  # the proxy is closing: asyncio would report a cancelled connection handler as an error
        finally:
            self._tasks.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        replies = asyncio.ensure_future(_pipe(upstream_r, client_w))
        buf = bytearray()
        try:
            while data := await client_r.read(1 << 16):
                buf += data
                while (held := self._frozen_until - time.monotonic()) > 0:
                    await asyncio.sleep(min(held, 0.1))
                out = bytearray()
                while (got := take_command(buf)) is not None:
                    size, cmd = got
                    if self._refuse(cmd):
                        upstream_w.write(out)  # what came before it, as a dropped connection leaves it
                        return
                    out += buf[:size]
                    del buf[:size]
                upstream_w.write(out)
                await upstream_w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            replies.cancel()
            for w in (upstream_w, client_w):
                w.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await w.wait_closed()

    async def _shutdown(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    writer.close()
