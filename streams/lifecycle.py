"""Stopping a batch loop cleanly: the loop finishes the batch in hand before its clients close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

STOP_WAIT_S = 30.0
"""How long stop() waits for the loop to finish the batch in hand before closing the clients anyway."""


class Lifecycle:
    """A loop's stop flag, and whether its ``run()`` is running.

    ``run()`` wraps its body in :meth:`running` and checks :attr:`stopping` between batches;
    ``stop()`` calls :meth:`request_stop` and awaits :meth:`wait_stopped` before closing clients.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()  # set while run() is not running
        self._idle.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self) -> None:
        self._stopping.set()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    async def wait_stopped(self) -> None:
        """Wait until ``run()`` has returned, at most :data:`STOP_WAIT_S`."""
        try:
            await asyncio.wait_for(self._idle.wait(), STOP_WAIT_S)
        except TimeoutError:
            log.warning("the %s loop did not finish its batch within %.0fs; stopping anyway", self.name, STOP_WAIT_S)

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a stop is requested meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
