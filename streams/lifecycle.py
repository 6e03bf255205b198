"""Stopping a batch loop cleanly: the loop finishes the batch in hand before its clients close."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

STOP_WAIT_S = 30.0
"""How long stop() waits for the loop to finish the batch in hand before closing the clients anyway."""


async def wait_idle(idle: asyncio.Event, name: str) -> None:
    """Wait until a loop's ``run()`` has returned (it checks the stop flag between batches)."""
    try:
        await asyncio.wait_for(idle.wait(), STOP_WAIT_S)
    except TimeoutError:
        log.warning("the %s loop did not finish its batch within %.0fs; stopping anyway", name, STOP_WAIT_S)


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if a stop is requested meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
