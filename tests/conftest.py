"""Fixtures: a real Tansu broker per session on a random loopback port, a real Redis server.

Every test gets its own topic prefix and Redis key prefix, so tests never see
each other's data while sharing one broker.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from streams.config import KafkaConfig
from tests import processes
from workers.settings import Settings, load_settings
from workers.stack.embedded import EmbeddedBroker, EmbeddedRedis

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_process_outlives_its_test() -> Iterator[None]:
    """Kill, and report, any child process a test left running (even when the test failed).

    Session fixtures (the broker, Redis) start before this and are not counted.
    """
    if not processes.has_proc():
        yield
        return
    before = processes.children(os.getpid())
    yield
    # A process told to stop a moment ago may still be on its way out: give it a few seconds.
    leaked = processes.wait_gone(processes.children(os.getpid()) - before, 5)
    if leaked:
        what = processes.describe(leaked)
        processes.kill(leaked)
        processes.wait_gone(leaked, 10)
        pytest.fail(f"the test left processes running (now killed): {what}", pytrace=False)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis (127.0.0.1:6379, as on CI) or, if absent, one started for the session."""
    url = os.environ.get("LEARNLOOP_TEST_REDIS_URL")
    if url:
        yield url
    elif _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        with EmbeddedRedis() as r:
            yield r.url


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(broker: EmbeddedBroker, redis_url: str, unique: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings pointing at the session broker and Redis, isolated by prefixes."""
    # A learners file that is named must exist (only the default path may be absent). An empty one
    # declares nothing, so every learner gets the default; tests that need learners write over it.
    (tmp_path / "learners.toml").touch()
    s = load_settings(
        kafka=KafkaConfig(
            bootstrap_servers=broker.bootstrap_servers,
            topic_prefix=f"t{unique}.",
            partitions=2,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        ),
        redis={"url": redis_url, "key_prefix": f"test:{unique}:"},
        feedback={"group_id": f"g-{unique}", "snapshot_every_s": 0.2, "batch_timeout_ms": 20},
        data_dir=tmp_path / "data",
        learners_file=tmp_path / "learners.toml",
        snapshot={"key": "test-snapshot-key-0123456789"},
    )
    yield s
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"test:{unique}:*"))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[object]:
    from workers.feedback.redis_store import RedisStore

    s = RedisStore.from_config(settings.redis, dedup_window=settings.feedback.dedup_window)
    yield s
    await s.close()


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment for a `learnloop worker` subprocess with the same settings as ``settings``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")},
        "LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "LEARNLOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "LEARNLOOP_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "LEARNLOOP_KAFKA__SESSION_TIMEOUT_MS": str(settings.kafka.session_timeout_ms),
        "LEARNLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": str(settings.kafka.heartbeat_interval_ms),
        "LEARNLOOP_REDIS__URL": settings.redis.url,
        "LEARNLOOP_REDIS__KEY_PREFIX": settings.redis.key_prefix,
        "LEARNLOOP_FEEDBACK__GROUP_ID": settings.feedback.group_id,
        "LEARNLOOP_FEEDBACK__SNAPSHOT_EVERY_S": str(settings.feedback.snapshot_every_s),
        "LEARNLOOP_FEEDBACK__SNAPSHOT_EVERY_EVENTS": str(settings.feedback.snapshot_every_events),
        "LEARNLOOP_FEEDBACK__BATCH_MAX_RECORDS": str(settings.feedback.batch_max_records),
        "LEARNLOOP_FEEDBACK__BATCH_TIMEOUT_MS": str(settings.feedback.batch_timeout_ms),
        "LEARNLOOP_SNAPSHOT__KEY": settings.snapshot.key.get_secret_value(),
        "LEARNLOOP_LEARNERS_FILE": str(settings.learners_file),
        "LEARNLOOP_DATA_DIR": str(settings.data_dir),
        # No /metrics unless a test asks for a port: a taken default port (another stack on this host) stops a worker.
        "LEARNLOOP_METRICS__PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
