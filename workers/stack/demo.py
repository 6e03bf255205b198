"""`learnloop demo`: replay a drifting stream through the SDK and watch the system learn, live.

The stream is River's SEA generator with an abrupt concept switch (variant 0,
then variant 3 after ``switch_at`` events): the threshold that separates the
classes moves, accuracy drops, ADWIN sees the error rise and the worker emits
a drift event and a retrain request. Two learners (logistic regression and a
Hoeffding adaptive tree) see the same events. A simulated app
(``workers.stack.demo_app``) takes every ``join_every``-th sample: it predicts
through the SDK, the prediction is logged, and for a share of them the true
label follows a second later by ``prediction_id`` alone (the two-call loop),
joined by the worker to the features that were served. A few malformed events
show the dead-letter path.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from river.datasets import synth

from schemas import (
    ConversationEvent,
    Envelope,
    FeatureValue,
    FeedbackEvent,
    KnowledgeUpdate,
    PredictionEvent,
    parse_event,
)
from streams.admin import ensure_topics
from streams.producer import EventProducer
from streams.topics import Topics
from workers.feedback.redis_store import RedisStore
from workers.lag.offsets import BrokerReader
from workers.serving import online_predictor
from workers.settings import Settings
from workers.stack.demo_app import AppTurn, ServedStats, SimulatedApp

DEMO_LEARNERS = ("sea-linear", "sea-tree")


def served_cells(stats: ServedStats | None, prequential: float | None) -> tuple[str, str, str, str]:
    """The version served, served accuracy, the learner's prequential accuracy, learning latency p50 / p90."""
    shown = f"{prequential:.4f}" if isinstance(prequential, float) else "-"
    if stats is None or stats.version is None:
        return ("none yet", "-", shown, "-")
    acc = stats.accuracy
    p50, p90 = stats.latency(0.5), stats.latency(0.9)
    latency = f"{p50 * 1000:,.0f} / {p90 * 1000:,.0f} ms" if p50 is not None and p90 is not None else "-"
    return (f"v{stats.version}", f"{acc:.4f}" if acc is not None else "-", shown, latency)


def demo_learners_file() -> Path:
    return Path(str(resources.files("workers.stack").joinpath("demo_learners.toml")))


def sea_stream(n: int, *, switch_at: int, seed: int = 7) -> Iterator[tuple[dict[str, FeatureValue], bool]]:
    """``n`` SEA samples: variant 0 up to ``switch_at``, variant 3 after (an abrupt switch)."""
    before = synth.SEA(variant=0, seed=seed)
    after = synth.SEA(variant=3, seed=seed + 1)
    chained = itertools.chain(before.take(switch_at), after.take(max(0, n - switch_at)))
    for x, y in chained:
        yield {f"x{k}": float(v) for k, v in x.items()}, bool(y)


def demo_conversations(round_: int) -> Iterator[ConversationEvent]:
    """The small support-chat corpus, as conversations of four turns, ids unique per round."""
    path = resources.files("workers.stack").joinpath("data/demo_conversations.jsonl")
    for i, line in enumerate(path.read_text().splitlines()):
        turn = json.loads(line)
        yield ConversationEvent(
            conversation_id=f"demo-{round_}-{i // 4}", turn=turn["turn"], role=turn["role"], text=turn["text"],
            user_id=f"user-{i // 4}", source="demo",
        )


def demo_events(
    n: int, *, switch_at: int, join_every: int = 10, conversations_every: int = 4000
) -> Iterator[Envelope | AppTurn | bytes]:
    """Events for every demo learner; every ``join_every``-th sample is the simulated app's to predict.

    Every ``conversations_every`` samples the conversation corpus is replayed once more, so the
    relations it states gain support from distinct conversations and become validated.
    """
    for i, (x, y) in enumerate(sea_stream(n, switch_at=switch_at)):
        if i % conversations_every == 0:
            yield from demo_conversations(i // conversations_every)
        for learner in DEMO_LEARNERS:
            if i % join_every == join_every - 1:
                yield AppTurn(learner, x, y)
            else:
                yield FeedbackEvent(learner=learner, features=x, label=y, source="demo")
        if i % 5000 == 2500:
            yield b'{"schema": "feedback/1", "learner": "sea-linear", "label": "maybe"}'  # a bad event


RATE_WINDOW_S = 5.0


@dataclass
class DemoView:
    sent_feedback: int = 0  # valid feedback events, to the feedback topic
    sent_predictions: int = 0
    sent_turns: int = 0
    sent_invalid: int = 0  # malformed on purpose, to the feedback topic: they end in the dead-letter topic
    started: float = field(default_factory=time.monotonic)
    sending_s: float | None = None  # how long producing took, once it is over
    learners: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    drifts: list[dict[str, Any]] = field(default_factory=list)
    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (when, learned) over the rate window
    turns: int = 0
    entities: set[str] = field(default_factory=set)
    relations: set[tuple[str, str, str]] = field(default_factory=set)
    validated: set[tuple[str, str, str]] = field(default_factory=set)
    served: dict[str, ServedStats] = field(default_factory=dict)  # the simulated app's view, per learner

    @property
    def unreported(self) -> int:
        """Predictions the app never sent the outcome of: their samples are never learned."""
        return sum(s.served - s.reported for s in self.served.values())

    @property
    def produced(self) -> int:
        return self.sent_feedback + self.sent_predictions + self.sent_turns + self.sent_invalid

    @property
    def produced_feedback(self) -> int:
        """Records sent to the feedback topic, valid or not: what its consumers must get through."""
        return self.sent_feedback + self.sent_invalid

    def count_sent(self, item: Envelope | bytes) -> None:
        if isinstance(item, bytes):
            self.sent_invalid += 1
        elif isinstance(item, PredictionEvent):
            self.sent_predictions += 1
        elif isinstance(item, ConversationEvent):
            self.sent_turns += 1
        else:
            self.sent_feedback += 1

    @property
    def learned(self) -> int:
        return sum(int(r.get("n_learned", 0)) for r in self.learners)

    @property
    def deadlettered(self) -> int:
        return sum(v for p in self.progress for k, v in p.get("counters", {}).items() if k.startswith("deadletter:"))

    @property
    def consumed(self) -> int:
        return sum(p["position"] for p in self.progress)

    @property
    def lag(self) -> int:
        return sum(p["lag"] or 0 for p in self.progress)

    def sample(self, now: float | None = None) -> None:
        """Remember how many events are learned now; the rate is taken over the last few seconds of these."""
        now = time.monotonic() if now is None else now
        self.samples.append((now, self.learned))
        while len(self.samples) > 2 and self.samples[1][0] <= now - RATE_WINDOW_S:
            self.samples.popleft()

    def learned_per_s(self) -> float:
        """Events learned per second over the last :data:`RATE_WINDOW_S` seconds (0 once learning stops)."""
        if len(self.samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def last_drift_at(self, learner: str, status: dict[str, Any]) -> int | None:
        """A learner's newest drift, as an event count: from the drift events, which arrive as they happen.

        The learner's status is written with its snapshot, up to a snapshot interval later, so
        right after an alarm it still names the one before; the newer of the two is the answer.
        """
        seen = [int(ev["n_seen"]) for ev in self.drifts if ev.get("learner") == learner]
        from_status = (status.get("last_drift") or {}).get("n_seen")
        if from_status is not None:
            seen.append(int(from_status))
        return max(seen) if seen else None

    def render(self) -> Group:
        took = self.sending_s if self.sending_s is not None else time.monotonic() - self.started
        sent = (
            f"sent {self.produced:,} events in {took:.0f}s: {self.sent_feedback:,} feedback, "
            f"{self.sent_predictions:,} predictions (the app's, logged for the join), "
            f"{self.sent_turns:,} conversation turns, {self.sent_invalid} malformed on purpose"
        )
        head = (
            f"{sent}\nlearned {self.learned:,} ({self.learned_per_s():,.0f}/s over the last {RATE_WINDOW_S:.0f}s) · "
            f"dead-lettered {self.deadlettered} · lag {self.lag:,}"
        )
        t = Table("learner", "model", "learned", "accuracy", "rolling", "drifts", "last drift at event")
        for r in self.learners:
            m = r.get("metrics", {})
            at = self.last_drift_at(r["name"], r)
            t.add_row(
                r["name"], r.get("model", ""), f"{r.get('n_learned', 0):,}",
                f"{m.get('accuracy', 0):.4f}", f"{m.get('rolling_accuracy', 0):.4f}",
                str(r.get("drifts", 0)), f"{at:,}" if at is not None else "-",
            )
        d = Table("drift alarm", "learner", "at event", "error before", "error after")
        for ev in self.drifts[:6]:
            d.add_row(
                ev["detected_at"][11:19], ev["learner"], f"{ev['n_seen']:,}",
                _drift_stat(ev["before"]), _drift_stat(ev["after"]),
            )
        lag = Table("topic", "partition", "position", "log end", "lag")
        for p in self.progress:
            lag.add_row(p["topic"], str(p["partition"]), f"{p['position']:,}", f"{p['highwater'] or 0:,}",
                        f"{p['lag'] or 0:,}")
        k = (
            f"knowledge: {self.turns} conversation turns mined · {len(self.entities)} entities · "
            f"{len(self.relations)} relations, {len(self.validated)} validated"
        )
        return Group(Panel(head, title="learnloop demo"), t, self.render_app(), d, lag, Panel(k))

    def render_app(self) -> Table:
        """The simulated app's side: what it is served, how right that was, how soon feedback is served."""
        app = Table("app: learner", "served", "served acc", "prequential acc", "learning latency p50 / p90",
                    title="the two-call loop (predict, then feedback by prediction_id)")
        for r in self.learners:
            prequential = (r.get("metrics") or {}).get("accuracy")
            app.add_row(r["name"], *served_cells(self.served.get(r["name"]), prequential))
        return app

    def add_knowledge(self, update: KnowledgeUpdate) -> None:
        self.turns += 1
        self.entities.update(e.key for e in update.entities)
        for r in update.relations:
            self.relations.add((r.subject, r.predicate, r.object))
            if r.validated:
                self.validated.add((r.subject, r.predicate, r.object))


async def refresh(view: DemoView, store: RedisStore, knowledge: AIOKafkaConsumer) -> None:
    view.learners = await store.learner_statuses()
    view.progress = await store.progress()
    view.drifts = await store.recent_drifts()
    view.sample()
    for records in (await knowledge.getmany(timeout_ms=0)).values():
        for r in records:
            ev = parse_event(r.value or b"", KnowledgeUpdate)
            assert isinstance(ev, KnowledgeUpdate)
            view.add_knowledge(ev)


async def run_demo(
    settings: Settings, *, events: int, switch_at: int, rate: float, live: bool,
    should_stop: Callable[[], bool] = lambda: False,
) -> DemoView:
    """Replay the stream at ``rate`` events/s (0 = as fast as possible) and show progress until learned.

    ``should_stop`` is polled between events and while waiting: a stop signal ends the replay early.
    """
    store = RedisStore.from_config(settings.redis)
    view = DemoView()
    console = Console()
    topics = Topics(settings.kafka.topic_prefix)
    await ensure_topics(settings.kafka, topics.all())
    knowledge = AIOKafkaConsumer(
        topics.knowledge, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
        **settings.kafka.client_kwargs(),  # security settings and timeouts, as every other client
    )
    await knowledge.start()
    try:
        # The simulated app needs learners that learn while it replays: start once the worker has joined.
        await worker_joined(settings, should_stop)
        with Live(view.render(), console=console, refresh_per_second=4, transient=False) if live \
                else _NoLive() as screen:
            async with EventProducer(settings.kafka, acks=1) as producer, \
                    online_predictor(settings, DEMO_LEARNERS) as predictor:
                app = SimulatedApp(predictor)
                view.served = app.stats
                view.started = last = time.monotonic()  # the replay's pace counts from here
                for item in demo_events(events, switch_at=switch_at):
                    if should_stop():
                        break
                    now = time.monotonic()
                    if isinstance(item, AppTurn):
                        cold = app.serve(item, now)  # the app's first call: predict (the predictor logs it)
                        if cold is None:
                            view.sent_predictions += 1
                            continue
                        item = cold
                    for later in app.due(now):  # its second call, for predictions made a while ago
                        await producer.send(later)
                        view.count_sent(later)
                        app.produced(later.learner, now)
                    if isinstance(item, bytes):
                        await producer.send_raw(producer.topics.feedback, item, key=b"sea-linear")
                    else:
                        await producer.send(item)
                        if isinstance(item, FeedbackEvent):
                            app.produced(item.learner, now)
                    view.count_sent(item)
                    if rate and view.produced % 100 == 0:
                        ahead = view.produced / rate - (time.monotonic() - view.started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                    if time.monotonic() - last > 0.5:
                        await producer.flush()
                        await refresh(view, store, knowledge)
                        screen.update(view.render())
                        last = time.monotonic()
                if not should_stop():
                    await asyncio.sleep(app.delay_s)
                    for later in app.due(float("inf")):  # the app reports the last outcomes too
                        await producer.send(later)
                        view.count_sent(later)
                await predictor.flush()
            view.sending_s = time.monotonic() - view.started
            # Wait until the workers have caught up with everything produced.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not should_stop():
                await refresh(view, store, knowledge)
                screen.update(view.render())
                if view.consumed >= view.produced_feedback and view.turns >= view.sent_turns:
                    settle = time.monotonic() + 2.5  # one more snapshot interval, so statuses are final
                    while time.monotonic() < settle and not should_stop():
                        await asyncio.sleep(0.1)
                    await refresh(view, store, knowledge)
                    screen.update(view.render())
                    break
                await asyncio.sleep(0.5)
        if not live:
            console.print(view.render())
    finally:
        await knowledge.stop()
        await store.close()
    return view


async def worker_joined(settings: Settings, should_stop: Callable[[], bool], timeout_s: float = 120.0) -> bool:
    """Wait until the feedback worker's consumer group is stable with a member (False after ``timeout_s``)."""
    group = settings.feedback.group_id
    deadline = time.monotonic() + timeout_s
    async with BrokerReader(settings.kafka) as reader:
        while time.monotonic() < deadline and not should_stop():
            info = (await reader.describe([group])).get(group)
            if info is not None and info.state == "Stable" and info.members:
                return True
            await asyncio.sleep(0.2)
    return False


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _: object) -> None:
        return None


def _drift_stat(stats: dict[str, Any]) -> str:
    """The window's mean (drift/1: the error; drift/2: the feature's mean), or "-" where it has none."""
    mean = stats.get("mean")
    return f"{mean:.3f}" if isinstance(mean, int | float) else "-"
