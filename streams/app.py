"""The Faust layer, kept thin: the app, the contract's topics, and services hosted in it.

Everything Faust-specific is here. The feedback loop (``streams.consumer``) is
plain aiokafka + asyncio and runs as a Faust *service*; Faust agents serve the
low-volume topics, where its per-event cost does not matter.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import faust
from mode import Service

from schemas import TOPIC_EVENTS, DeadLetter, DriftEvent, DriftEventV2, parse_event
from schemas.errors import InvalidEvent, LearnloopError
from streams.config import KafkaConfig
from streams.metrics import LoopMetrics
from streams.topics import TOPIC_SUFFIXES, Topics

log = logging.getLogger(__name__)

EXIT_LOOP_FAILED = 3
"""Exit code of a worker whose loop stopped on an error it cannot get past; its last error line says which."""


def faust_broker_url(kafka: KafkaConfig) -> str:
    """Faust names several bootstrap hosts with ';'.

    >>> faust_broker_url(KafkaConfig(bootstrap_servers="a:9092,b:9092"))
    'kafka://a:9092;b:9092'
    """
    return "kafka://" + ";".join(h.strip() for h in kafka.bootstrap_servers.split(","))


def create_app(kafka: KafkaConfig, *, app_id: str, data_dir: Path) -> faust.App:
    """A Faust app wired to our settings; no web server (metrics have their own port)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=faust_broker_url(kafka),
        broker_client_id=f"{kafka.client_id}-{app_id}",
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=kafka.heartbeat_interval_ms / 1000,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        datadir=str(data_dir),
        autodiscover=False,
    )
    topics = Topics(kafka.topic_prefix)
    # Declared so Faust knows (and creates) every topic of the contract.
    app.contract_topics = {  # type: ignore[attr-defined]
        s: app.topic(topics.name(s), value_type=bytes, partitions=kafka.partitions) for s in TOPIC_SUFFIXES
    }
    return app


class ConsumerLoop(Protocol):
    async def start(self) -> None: ...
    async def run(self) -> None: ...
    def request_stop(self) -> None: ...
    async def stop(self) -> None: ...


class LoopService(Service):
    """Hosts one of our batch loops (feedback, conversations) inside the Faust worker's lifecycle.

    A loop that returns from ``run()`` with an exception cannot make progress any more, and a
    worker that stays up without it would sit idle with work pending. So the failure is logged
    in one line (with a traceback only for errors we do not raise on purpose), the worker is
    stopped as a SIGTERM stops it, and ``run_faust`` exits with :data:`EXIT_LOOP_FAILED`.
    """

    def __init__(self, loop: ConsumerLoop, **kwargs: Any) -> None:
        self.loop_impl = loop
        self.failure: BaseException | None = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.loop_impl.start()
        # Batches allocate many short-lived objects; keep the long-lived start-up heap (models,
        # libraries) out of the full collections they trigger. ~25% of the feedback loop's time.
        gc.collect()
        gc.freeze()

    @Service.task
    async def _consume(self) -> None:
        try:
            await self.loop_impl.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            if isinstance(exc, LearnloopError):
                log.critical("worker stopping: %s", exc)
            else:
                log.critical("worker stopping: the loop failed: %r", exc, exc_info=exc)
            # The path an operator's SIGTERM takes: Faust stops every service in order (the loop
            # snapshots what it still can), where mode's crash would skip the loop's own stop logic.
            signal.raise_signal(signal.SIGTERM)

    async def on_stop(self) -> None:
        self.loop_impl.request_stop()
        await self.loop_impl.stop()


def add_drift_agent(
    app: faust.App,
    kafka: KafkaConfig,
    on_drift: Callable[[DriftEvent | DriftEventV2], Awaitable[None]],
    metrics: LoopMetrics | None = None,
) -> None:
    """Follow ``learnloop.drift``: each alarm is logged and handed to ``on_drift`` (e.g. the history)."""
    topics = app.contract_topics  # type: ignore[attr-defined]
    m = metrics or LoopMetrics()  # the hosting worker's own records-in and dead-letter counters

    @app.agent(topics["drift"], name=f"{kafka.topic_prefix}drift-log")
    async def drift_log(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            m.events_in.labels(msg.topic).inc()
            try:
                ev = parse_event(event.value, TOPIC_EVENTS["drift"])
            except InvalidEvent as exc:
                dl = DeadLetter.from_record(
                    topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
                    value=msg.value, error=exc, source=f"{kafka.client_id}-drift-log",
                )
                await topics["deadletter"].send(key=msg.key, value=dl.to_json(), headers=dl.headers())
                m.deadlettered.labels(msg.topic, dl.reason).inc()
                continue
            assert isinstance(ev, (DriftEvent, DriftEventV2))
            await on_drift(ev)
