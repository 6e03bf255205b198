"""Helpers shared by CLI commands: settings once, async entry, friendly failures."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaError

from schemas.errors import StoreUnavailable
from workers.settings import Settings, load_settings

T = TypeVar("T")


def settings() -> Settings:
    return load_settings()


def run_async(coro: Coroutine[Any, Any, T], *, settings: Settings | None = None) -> T:
    """Run a coroutine; unreachable servers become one readable line."""
    try:
        return asyncio.run(coro)
    except (KafkaConnectionError, KafkaError) as exc:
        where = settings.kafka.bootstrap_servers if settings else "the broker"
        raise StoreUnavailable(f"cannot reach Kafka at {where}: {exc}") from None
    except (ConnectionError, OSError) as exc:
        raise StoreUnavailable(f"connection failed: {exc}") from None
