"""A private asyncio loop in a daemon thread, and the base of the SDK's blocking wrappers on it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs coroutines on its own event loop from any thread; ``call`` blocks until the result.

    >>> async def add(a: int, b: int) -> int:
    ...     return a + b
    >>> lt = LoopThread("example")
    >>> lt.call(add(2, 3))
    5
    >>> lt.stop(); lt.closed
    True
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def stop(self) -> None:
        """Stop the loop and its thread (at most 10 s), then close the loop."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class AsyncClient(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


C = TypeVar("C", bound=AsyncClient)


class BlockingClient(Generic[C]):
    """Base of the SDK's blocking wrappers: an asyncio client started and driven on a LoopThread of its own."""

    def __init__(self, client: C, thread_name: str) -> None:
        self._async = client
        self._runner = LoopThread(thread_name)
        try:
            self._call(client.start())
        except BaseException:
            self._runner.stop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.call(coro)

    def close(self) -> None:
        """Stop the client, then the loop thread (a second call does nothing)."""
        if self._runner.closed:
            return
        try:
            self._call(self._async.stop())
        finally:
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
