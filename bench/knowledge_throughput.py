"""Knowledge throughput: broker → extraction (spaCy) → graph (LadybugDB), against spaCy alone on the same texts.

Run by hand, never from tests: ``.venv/bin/python -m bench.knowledge_throughput [--turns N] [--json]``.
bench/README.md says what each number means and records results.

Phases, in one run and on the same turns (best of ``--repeat``, interleaved):

- baseline: ``list(nlp.pipe(texts))`` with the very pipeline the extractor loaded (the limit);
- extraction: ``KnowledgeExtractor.extract`` in chunks of ``--batch`` (what one consumer batch does);
- whole path: the turns pre-produced to a real broker (Tansu), then a ``ConversationConsumer`` in-process
  with a real extractor and a LadybugDB graph in a temporary folder, until every turn is in the graph;
- worker process (once): ``learnloop worker conversations`` on the same turns, timed by its
  ``KnowledgeUpdate`` events (``bench/knowledge_worker.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.knowledge_worker import run_worker
from learners.knowledge.config import GazetteerEntry, NlpConfig
from learners.knowledge.extraction import KnowledgeExtractor
from schemas import ConversationEvent, Envelope
from streams.admin import ensure_topics
from streams.config import KafkaConfig
from streams.conversations import ConversationConsumer, ConversationProcessor, ConversationStats, Prepared
from streams.producer import EventProducer
from streams.topics import Topics
from workers.graph.ladybug_store import LadybugGraph
from workers.settings import GraphConfig
from workers.stack.embedded import EmbeddedBroker

Result = dict[str, Any]
DEMO = Path(__file__).resolve().parent.parent / "workers" / "stack" / "data" / "demo_conversations.jsonl"
TARGET = 0.8

# Small pools, so the same entities come back across conversations (as in a support inbox).
PEOPLE = ["Maria Lopez", "Tom Becker", "Priya Natarajan", "Jane Park", "Daniel Kim", "Sara Ahmed", "Bob Smith",
          "Alice Jones", "Lena Fischer", "Omar Haddad", "Chen Wei", "Lucas Martin", "Emma Wilson", "Raj Patel",
          "Sofia Rossi", "Kenji Tanaka", "Anna Kowalski", "David Cohen", "Fatima Khan", "Peter Novak"]
ORGS = ["Northwind Traders", "Contoso", "Fabrikam", "Globex", "Initech", "Acme Corp", "Umbrella Health",
        "Stark Logistics", "Wayne Capital", "Hooli", "Vandelay Industries", "Tyrell Systems"]
PLACES = ["Dublin", "Frankfurt", "Berlin", "London", "Seattle", "Paris", "Madrid", "Toronto", "Singapore",
          "Amsterdam"]
PRODUCTS = ["Payments API", "Atlas Console", "Ledger Service", "Events Export", "Okta", "Snowflake", "Azure",
            "Adyen", "Stripe", "BigQuery"]
TITLES = ["CTO", "head of sales", "product manager", "CFO", "lead engineer", "support lead"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
USER = [
    "Hi, I'm {p} from {o}. Our checkout on {x} keeps timing out since {d}.",
    "{p}, the {t} of {o}, wants a status update on {x} by {d}.",
    "We migrated from {x} to {x2} last month, could that explain the errors our team in {c} sees?",
    "{o} acquired {o2} and now {o2} users cannot log in to {x}.",
    "{p} works for {o} in {c} and owns the {x} migration.",
    "Is {x} deployed in {c} or in {c2}? {p} asked me this morning.",
    "Our data team in {c} uses {x} and wants the {x2} feature before {d}.",
    "{p}, a {t} at {o}, asked about pricing for {x} and {x2}.",
    "Can you tell {p2} at {o2} why {x} was down for an hour in {c}?",
    "{o} signed a partnership with {o2} on {x}, and {p} will lead it from {c}.",
]
ASSISTANT = [
    "Thanks {first}. {o} is on the Enterprise plan, so I have escalated this to the {x} team in {c}.",
    "Understood. {p2} leads the {x} team and will contact {p} directly.",
    "Possibly. {x} webhooks are routed through {x2}, which was upgraded on {d}.",
    "{x} uses {x2} for single sign-on; {o2} accounts must be moved to the {o} tenant.",
    "I have shared the migration guide with {p} and the {o} IT team in {c}.",
    "{x} runs in {c}, with a standby copy in {c2}; {p2} confirmed it on {d}.",
    "{o} can try {x} for thirty days; {p} will receive a quote from {p2}.",
    "Noted. {p2} will coordinate with {o} and with the {c} office about {x}.",
]


def gazetteer() -> list[GazetteerEntry]:
    """The product names, as a deployment would list its own systems (the small model misses most of them)."""
    return [GazetteerEntry(label="PRODUCT", pattern=x) for x in PRODUCTS]


def demo_texts() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
    return [(str(r["role"]), str(r["text"])) for r in rows]


def conversations(n: int, seed: int = 11) -> list[ConversationEvent]:
    """``n`` turns in conversations of 2 to 6 turns: templated turns about a cast drawn from the pools above,
    and one turn in five taken verbatim from workers/data/demo_conversations.jsonl. Deterministic."""
    rng = random.Random(seed)
    demo = demo_texts()
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    out: list[ConversationEvent] = []
    conv = 0
    while len(out) < n:
        p, p2 = rng.sample(PEOPLE, 2)
        o, o2 = rng.sample(ORGS, 2)
        c, c2 = rng.sample(PLACES, 2)
        x, x2 = rng.sample(PRODUCTS, 2)
        slots = {"p": p, "p2": p2, "first": p.split()[0], "o": o, "o2": o2, "c": c, "c2": c2, "x": x, "x2": x2,
                 "t": rng.choice(TITLES), "d": rng.choice(DAYS)}
        for turn in range(min(rng.randint(2, 6), n - len(out))):
            role = "user" if turn % 2 == 0 else "assistant"
            if rng.random() < 0.2:
                role, text = rng.choice(demo)
            else:
                text = rng.choice(USER if role == "user" else ASSISTANT).format(**slots)
            out.append(ConversationEvent(
                event_id=uuid.UUID(int=rng.getrandbits(128), version=4), source="bench",
                occurred_at=t0 + timedelta(seconds=len(out)), conversation_id=f"bench-conv-{conv:05d}", turn=turn,
                role=role, text=text))  # type: ignore[arg-type]
        conv += 1
    return out


def best(xs: Sequence[float]) -> float:
    return max(xs)


def baseline(extractor: KnowledgeExtractor, texts: Sequence[str]) -> tuple[float, float]:
    """Bare spaCy on the texts, with the extractor's own pipeline and batch size: wall and CPU seconds."""
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    docs = list(extractor.nlp.pipe(texts, batch_size=extractor.config.batch_size))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    del docs
    return dt, cpu


def extraction(
    extractor: KnowledgeExtractor, events: Sequence[ConversationEvent], batch: int
) -> tuple[float, float, int]:
    """``extract`` in chunks of ``batch`` (one consumer batch each): wall and CPU seconds, entities found."""
    gc.collect()
    entities = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(events), batch):
        entities += sum(len(ex.entities) for ex in extractor.extract(events[i:i + batch]))
    return time.perf_counter() - t0, time.process_time() - c0, entities


class TimedProcessor(ConversationProcessor):
    """Records when the first batch arrived and when the last turn was written (in the worker thread),
    with the process's CPU time at both points (every thread of this process, not the broker's)."""

    def __init__(self, *, n: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.n = n
        self.first: float | None = None
        self.done: float | None = None
        self.cpu: list[float] = []
        self.sizes: list[int] = []

    # The consumer pipelines: prepare (decode + extract) batch k+1 while finish (write) batch k runs.
    def prepare(self, records: Sequence[Any], stats: ConversationStats) -> Prepared:
        if self.first is None:
            self.first, self.cpu = time.perf_counter(), [time.process_time()]
        self.sizes.append(len(records))
        return super().prepare(records, stats)

    def finish(self, prepared: Prepared, stats: ConversationStats) -> list[Envelope]:
        out = super().finish(prepared, stats)
        if stats.written >= self.n and self.done is None:
            self.done = time.perf_counter()
            self.cpu.append(time.process_time())
        return out


async def produce(kafka: KafkaConfig, events: Sequence[ConversationEvent]) -> float:
    """Create the topics and send every turn, acknowledged: events/s."""
    await ensure_topics(kafka, Topics(kafka.topic_prefix).all())
    t0 = time.perf_counter()
    async with EventProducer(kafka) as p:
        await p.send_many(events)
    return len(events) / (time.perf_counter() - t0)


async def whole_path(kafka: KafkaConfig, extractor: KnowledgeExtractor, n: int, batch: int, graph_dir: Path) -> Result:
    """A ConversationConsumer in-process (as tests/integration/test_conversation_agent.py wires it)."""
    cfg = extractor.config
    graph = LadybugGraph(graph_dir, min_support=cfg.min_support, min_confidence=cfg.min_confidence,
                         threads=GraphConfig().threads)  # as the worker opens it (workers/graph/factory.py)
    graph.stats()  # open and create the schema outside the timed span, as a running worker already has
    processor = TimedProcessor(n=n, extractor=extractor, graph=graph, source="bench")
    consumer = ConversationConsumer(kafka=kafka, group_id=f"{kafka.topic_prefix}group", processor=processor,
                                    batch_max_records=batch, batch_timeout_ms=100)
    gc.collect()
    t_start = time.perf_counter()
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    stats = consumer.stats
    deadline = time.monotonic() + 900
    try:
        while stats.written < n or stats.batches < len(processor.sizes):  # written, published and committed
            if task.done():
                task.result()  # the loop died: raise its error
                raise RuntimeError(f"the consumer stopped at {stats.written}/{n}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the consumer wrote {stats.written}/{n} turns within 900 s")
            await asyncio.sleep(0.005)
        t_committed = time.perf_counter()
    finally:
        consumer.request_stop()
        await task
        await consumer.stop()
    in_graph = graph.stats()
    graph.close()
    assert processor.first is not None and processor.done is not None
    if in_graph["events"] != n:
        raise RuntimeError(f"the graph holds {in_graph['events']} source events, expected {n}")
    span, span_join = processor.done - processor.first, processor.done - t_start
    return {
        "turns_per_s": n / span, "with_join_turns_per_s": n / span_join,
        "entities_per_s": stats.entities / span, "relations_per_s": stats.relations / span,
        "seconds": span, "cpu_s": processor.cpu[-1] - processor.cpu[0], "join_s": processor.first - t_start,
        "commit_lag_s": t_committed - processor.done,
        "extract_s": stats.extract_s, "write_s": stats.write_s, "other_s": span - stats.extract_s - stats.write_s,
        "batches": len(processor.sizes), "mean_batch": n / len(processor.sizes), "entities": stats.entities,
        "relations": stats.relations,
        "graph": {k: in_graph[k] for k in ("entities", "relations", "validated_relations", "conversations", "events")},
    }


def main(args: argparse.Namespace) -> Result:
    n, batch = args.turns, args.batch
    events = conversations(n)
    texts = [e.text for e in events]
    words = sum(len(t.split()) for t in texts)
    cfg = NlpConfig(gazetteer=gazetteer())
    extractor = KnowledgeExtractor(cfg)
    res: Result = {"turns": n, "batch": batch, "words_per_turn": words / n, "model": cfg.model,
                   "pipes": extractor.nlp.pipe_names, "nlp_batch_size": cfg.batch_size, "cpus": os.cpu_count(),
                   "python": sys.version.split()[0], "repeat": args.repeat, "load_before": os.getloadavg()[0]}
    extractor.extract(events[: min(n, 256)])  # warm: first calls allocate and fill vocab/string caches
    list(extractor.nlp.pipe(texts[:256], batch_size=cfg.batch_size))
    bases: list[tuple[float, float]] = []
    extracts: list[tuple[float, float, int]] = []
    runs: list[Result] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="learnloop-kbench-")))
        broker = stack.enter_context(EmbeddedBroker(log_path=tmp / "broker.log"))
        for i in range(args.repeat):  # interleaved, best of each: the machine's load drifts during a run
            bases.append(baseline(extractor, texts))
            extracts.append(extraction(extractor, events, batch))
            kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"kb{uuid.uuid4().hex[:10]}.",
                                session_timeout_ms=2000, heartbeat_interval_ms=500)
            res["produce_turns_per_s"] = max(res.get("produce_turns_per_s", 0.0), asyncio.run(produce(kafka, events)))
            runs.append(asyncio.run(whole_path(kafka, extractor, n, batch, tmp / f"graph-{i}")))
        if not args.skip_worker:  # once, after the interleaved phases: it is a process of its own
            kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"kw{uuid.uuid4().hex[:10]}.",
                                session_timeout_ms=2000, heartbeat_interval_ms=500)
            asyncio.run(produce(kafka, events))
            res["worker"] = asyncio.run(run_worker(kafka, n, data_dir=tmp / "worker", batch=batch,
                                                   gazetteer=cfg.gazetteer, log=tmp / "worker.log"))
    base_s, base_cpu = min(bases)
    ext_s, ext_cpu, ext_entities = min(extracts)
    res["baseline"] = {"turns_per_s": n / base_s, "words_per_s": words / base_s, "cpu_s": base_cpu,
                       "runs_s": [s for s, _ in bases]}
    res["extraction"] = {"turns_per_s": n / ext_s, "entities_per_s": ext_entities / ext_s, "cpu_s": ext_cpu,
                         "runs_s": [s for s, _, _ in extracts]}
    res["whole_path_runs"] = [r["turns_per_s"] for r in runs]
    res["whole_path"] = w = max(runs, key=lambda r: float(r["turns_per_s"]))
    base = res["baseline"]["turns_per_s"]
    res["ratio_extraction"] = res["extraction"]["turns_per_s"] / base
    res["ratio"] = w["turns_per_s"] / base
    res["ratio_with_join"] = w["with_join_turns_per_s"] / base
    # CPU seconds per turn, baseline over whole path: what the ratio would be with no waiting and no overlap.
    # Far above the wall ratio means other processes took the CPU during the run (compare before trusting it).
    res["ratio_cpu"] = base_cpu / w["cpu_s"]
    res["target"] = TARGET
    res["load_after"] = os.getloadavg()[0]
    return res


def table(r: Result) -> Iterator[str]:
    base, w = r["baseline"]["turns_per_s"], r["whole_path"]
    yield (f"{r['turns']:,} turns ({r['words_per_turn']:.1f} words/turn), {r['model']} [{', '.join(r['pipes'])}], "
           f"nlp batch {r['nlp_batch_size']}, consumer batch {r['batch']}, {r['cpus']} CPUs, Python {r['python']}, "
           f"best of {r['repeat']}")
    yield f"{'path':<62}{'turns/s':>9}{'ents/s':>9}{'ratio':>7}"
    rows = [(f"baseline: list(nlp.pipe(texts)), {r['baseline']['words_per_s']:,.0f} words/s", base, None),
            ("extraction alone: KnowledgeExtractor.extract per batch", r["extraction"]["turns_per_s"],
             r["extraction"]["entities_per_s"]),
            ("whole path: 1st batch -> last turn in the graph", w["turns_per_s"], w["entities_per_s"]),
            ("whole path: consumer start() -> last turn in the graph", w["with_join_turns_per_s"], None)]
    if "worker" in r:
        rows += [("worker process: 1st KnowledgeUpdate batch -> last", r["worker"]["turns_per_s"], None),
                 ("worker process: process start -> last KnowledgeUpdate", r["worker"]["with_start_turns_per_s"],
                  None)]
    for name, v, e in rows:
        yield f"{name:<62}{v:>9,.0f}{'' if e is None else f'{e:,.0f}':>9}{v / base:>7.2f}"
    yield f"produce (EventProducer.send_many, acks=all): {r['produce_turns_per_s']:,.0f} turns/s"
    yield (f"inside the consumer ({w['seconds']:.2f} s, {w['batches']} batches of {w['mean_batch']:.0f}): "
           f"extract {w['extract_s']:.2f} s ({w['extract_s'] / w['seconds']:.0%}), "
           f"graph write {w['write_s']:.2f} s ({w['write_s'] / w['seconds']:.0%}), "
           f"rest {w['other_s']:.2f} s ({w['other_s'] / w['seconds']:.0%}); group join {w['join_s']:.2f} s")
    yield (f"CPU seconds: baseline {r['baseline']['cpu_s']:.2f}, extraction {r['extraction']['cpu_s']:.2f}, "
           f"whole path {w['cpu_s']:.2f} (ratio {r['ratio_cpu']:.2f}); 1-min load average "
           f"{r['load_before']:.1f} before, {r['load_after']:.1f} after, on {r['cpus']} CPUs")
    yield (f"ratio whole path / baseline: {r['ratio']:.2f} "
           f"({'meets' if r['ratio'] >= r['target'] else 'BELOW'} the {r['target']} target)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=2000, help="conversation turns")
    ap.add_argument("--batch", type=int, default=256, help="conversation consumer batch_max_records")
    ap.add_argument("--repeat", type=int, default=2, help="each phase, interleaved: best of N")
    ap.add_argument("--skip-worker", action="store_true", help="skip the worker-process phase")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    if a.turns < 1 or a.batch < 1 or a.repeat < 1:
        ap.error("--turns, --batch and --repeat must be positive")
    return a


if __name__ == "__main__":
    cli = parse()
    result = main(cli)
    print(json.dumps(result, indent=2) if cli.json else "\n".join(table(result)))
