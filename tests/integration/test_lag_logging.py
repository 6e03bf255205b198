"""The lag reader samples quietly: no aiokafka INFO line per probe once a process set up its logging."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition

from streams.admin import ensure_topics
from workers.cli import QUIET_AT_INFO, quiet_library_loggers
from workers.lag.offsets import BrokerReader
from workers.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def restore_levels() -> Iterator[None]:
    before = {name: logging.getLogger(name).level for name in QUIET_AT_INFO}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


async def probe_logs(settings: Settings, caplog: pytest.LogCaptureFixture) -> str:
    topic = f"{settings.kafka.topic_prefix}quiet"
    await ensure_topics(settings.kafka, [topic])
    caplog.clear()
    async with BrokerReader(settings.kafka) as reader:
        for _ in range(3):  # what three exporter samples do
            await reader.probe({TopicPartition(topic, 0): 0})
    return caplog.text


async def test_probes_log_no_subscription_line_at_info_but_do_at_debug(
    settings: Settings, caplog: pytest.LogCaptureFixture, restore_levels: None
) -> None:
    caplog.set_level(logging.INFO)
    quiet_library_loggers("info")
    assert "Updating subscribed topics" not in await probe_logs(settings, caplog)

    caplog.set_level(logging.DEBUG)
    quiet_library_loggers("debug")
    assert (await probe_logs(settings, caplog)).count("Updating subscribed topics") == 3
