"""Learning latency: labelled feedback produced → the first prediction served from a version that learned it.

Run by hand, never from tests: ``.venv/bin/python -m bench.learning_latency [--json]``.
bench/README.md says what each number means and records results.

Everything runs for real on loopback: an embedded broker, Redis, ``learnloop worker
feedback`` and ``learnloop worker api`` as processes of their own, a paced producer in a
third process. This process follows the versions twice, as an app would: through the
gateway (``POST /v1/predict/sea``, polled) and through the SDK (``OnlinePredictor``,
polled in-process). The ``sea`` learner reads one partition, every produced event is
valid and learned in order, so a version numbered ``v`` (events learned) includes the
events at offsets below ``v``: the latency of the event at offset ``o`` is the time of
the first answer with ``model_version > o`` minus the record's Kafka timestamp.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2 as httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.feedback_throughput import clean_redis, paced_producer, pct, pick_redis, sea, worker_env
from schemas import FeedbackEvent
from streams.admin import ensure_topics
from streams.predictor import ModelNotReady, SyncOnlinePredictor
from streams.topics import Topics
from workers.api.keys import hash_key, new_key
from workers.serving import sync_online_predictor
from workers.settings import Settings, load_settings
from workers.stack.embedded import EmbeddedBroker, free_port

LEARNERS = '[learners.sea]\ntask = "binary"\nmodel = "logistic_regression"\n'
KEY = b"sea"
Result = dict[str, Any]


def settings_for(bootstrap: str, redis_url: str, tmp: Path) -> Settings:
    u = uuid.uuid4().hex[:10]  # fresh topics, group and Redis keys for every phase
    return load_settings(
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": f"bench{u}.", "session_timeout_ms": 2000,
               "heartbeat_interval_ms": 500},
        redis={"url": redis_url, "key_prefix": f"bench:{u}:"},
        feedback={"group_id": f"bench-{u}", "store_samples": False},
        learners_file=tmp / "learners.toml", data_dir=tmp / f"data-{u}",
        snapshot={"key": "bench-snapshot-key-0123456789"},
    )


class Stack:
    """The feedback worker and the gateway as processes, on ``settings``; stopped (SIGTERM) on exit."""

    def __init__(self, s: Settings, tmp: Path, key: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        entry = {"name": "bench", "sha256": hash_key(key), "scopes": ["predict", "write", "read"]}
        self.env = {**worker_env(s), "LEARNLOOP_API__PORT": str(self.port), "LEARNLOOP_API__KEYS": json.dumps([entry]),
                    "LEARNLOOP_LOG_LEVEL": "warning"}
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, kind: str) -> None:
        with open(self.tmp / f"{kind}.log", "ab") as out:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", kind], env=self.env,
                                               stdout=out, stderr=out))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def wait_served(url: str, headers: dict[str, str], deadline_s: float = 120) -> str:
    """Poll the gateway until it serves a version of ``sea``; that version."""
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while time.monotonic() < deadline:
            try:
                res = await http.post("/v1/predict/sea?log=false", json={"features": {"x0": 1.0}}, headers=headers)
                if res.status_code == 200:
                    return str(res.json()["model_version"])
            except httpx.TransportError:
                pass  # not listening yet
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the gateway at {url} served no version of 'sea' within {deadline_s:.0f} s")


async def record_times(s: Settings, n: int) -> list[float]:
    """The Kafka timestamp (s) of each of the first ``n`` records of the feedback topic, by offset."""
    topic = Topics(s.kafka.topic_prefix).feedback
    c = AIOKafkaConsumer(enable_auto_commit=False, **s.kafka.client_kwargs())
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        times: dict[int, float] = {}
        deadline = time.monotonic() + 60
        while len(times) < n and time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=200)).values():
                times.update((r.offset, r.timestamp / 1000) for r in recs if r.key == KEY)
        return [times[o] for o in sorted(times)][:n]
    finally:
        await c.stop()


def latencies(produced: list[float], answers: list[tuple[float, int]], base: int) -> list[float]:
    """For the event at each offset: first answer time with a version past its offset, minus its produce time.

    >>> latencies([10.0, 10.5], [(10.2, 0), (10.4, 1), (10.9, 2)], base=0)
    [0.40000000000000036, 0.40000000000000036]
    """
    out = []
    firsts: list[tuple[int, float]] = []  # (version, first time it was answered), versions increasing
    for t, v in answers:
        if not firsts or v > firsts[-1][0]:
            firsts.append((v, t))
    versions = [v for v, _ in firsts]
    for i, t_produced in enumerate(produced):
        j = bisect.bisect_right(versions, base + i)  # the first version with v > offset, i.e. including it
        if j < len(firsts):
            out.append(max(0.0, firsts[j][1] - t_produced))
    return out


async def poll_gateway(url: str, headers: dict[str, str], stop: threading.Event, every_s: float
                       ) -> list[tuple[float, int]]:
    answers: list[tuple[float, int]] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while not stop.is_set():
            res = await http.post("/v1/predict/sea?log=false", json={"features": {"x0": 1.0}}, headers=headers)
            answers.append((time.time(), int(res.json()["model_version"])))
            await asyncio.sleep(every_s)
    return answers


def poll_sdk(predictor: SyncOnlinePredictor, stop: threading.Event, every_s: float,
             out: list[tuple[float, int]]) -> None:
    x = {"x0": 1.0, "x1": 1.0, "x2": 1.0}
    while not stop.is_set():
        out.append((time.time(), int(predictor.predict("sea", x, log=False).model_version)))
        time.sleep(every_s)


def wait_version(predictor: SyncOnlinePredictor, version: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if int(predictor.get("sea").version) >= version:
                return
        except ModelNotReady:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the SDK predictor did not serve version {version} of 'sea' within {timeout:.0f} s")


def sdk_predict_cost(predictor: SyncOnlinePredictor, calls: int, repeat: int = 3) -> Result:
    """SDK ``predict`` (no log, then logged) against River's own ``predict_proba_one`` on the same served model."""
    served = predictor.get("sea")
    river = served.learner_obj.proba_scorer
    assert river is not None, "a logistic regression predicts the argmax of its probabilities"
    xs = [x for x, _ in sea(calls, seed=11)]

    def timed(call: Any) -> float:
        t0 = time.perf_counter()
        for x in xs:
            call(x)
        return (time.perf_counter() - t0) / len(xs) * 1e6

    best = {"river_us": float("inf"), "sdk_us": float("inf"), "sdk_logged_us": float("inf")}
    for _ in range(repeat):  # interleaved, best of each: the machine's load drifts
        best["river_us"] = min(best["river_us"], timed(river))
        best["sdk_us"] = min(best["sdk_us"], timed(lambda x: predictor.predict("sea", x, log=False)))
        best["sdk_logged_us"] = min(best["sdk_logged_us"], timed(lambda x: predictor.predict("sea", x)))
    river_us = best["river_us"]
    return {**best, "ratio": best["sdk_us"] / river_us, "ratio_logged": best["sdk_logged_us"] / river_us,
            "calls": calls, "version": served.version}


def learning_latency(s: Settings, tmp: Path, rate: float, seconds: float, poll_s: float) -> Result:
    """Produce ``rate`` events/s for ``seconds``; follow the versions through the gateway and the SDK."""
    key = new_key()
    headers = {"X-API-Key": key}
    stack = Stack(s, tmp, key)
    n = int(rate * seconds)
    warm = 500  # a first version, so that both followers serve before the clock starts
    stream = sea(warm + n)
    raws = [FeedbackEvent(learner="sea", features=x, label=y, source="bench").to_json() for x, y in stream]
    asyncio.run(ensure_topics(s.kafka, Topics(s.kafka.topic_prefix).all()))
    topic = Topics(s.kafka.topic_prefix).feedback
    try:
        stack.start("feedback")
        stack.start("api")
        paced_producer(s.kafka.bootstrap_servers, topic, raws[:warm], 10_000)
        first = asyncio.run(wait_served(stack.url, headers))
        with sync_online_predictor(s, ["sea"], log=False) as predictor:
            wait_version(predictor, int(first), timeout=120)
            stop = threading.Event()
            sdk_answers: list[tuple[float, int]] = []
            sdk_thread = threading.Thread(target=poll_sdk, args=(predictor, stop, poll_s / 5, sdk_answers))
            sdk_thread.start()
            producer = multiprocessing.get_context("spawn").Process(
                target=paced_producer, args=(s.kafka.bootstrap_servers, topic, raws[warm:], rate))

            async def follow() -> list[tuple[float, int]]:
                gateway = asyncio.create_task(poll_gateway(stack.url, headers, stop, poll_s))
                producer.start()
                await asyncio.to_thread(producer.join)
                # Until the last event is served (or a minute passes): the tail is part of the latency.
                deadline = time.monotonic() + 60
                while (not sdk_answers or sdk_answers[-1][1] < warm + n) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(poll_s * 2)
                stop.set()
                return await gateway

            gw_answers = asyncio.run(follow())
            sdk_thread.join()
    finally:
        stack.stop()
    produced = asyncio.run(record_times(s, warm + n))[warm:]
    span = produced[-1] - produced[0] if len(produced) > 1 else 0.0
    via_gw, via_sdk = latencies(produced, gw_answers, warm), latencies(produced, sdk_answers, warm)
    return {"rate": rate, "events": n, "produced_per_s": len(produced) / span if span else 0.0,
            "gateway_ms": {k: v * 1000 for k, v in pct(via_gw).items()} if via_gw else None,
            "sdk_ms": {k: v * 1000 for k, v in pct(via_sdk).items()} if via_sdk else None,
            "gateway_matched": len(via_gw), "sdk_matched": len(via_sdk),
            "versions_seen": len({v for _, v in sdk_answers})}


async def offered_load(url: str, headers: dict[str, str], rate: float, seconds: float, log: bool) -> Result:
    """Open loop: a request every 1/rate s whatever the answers do; latency from when it was due."""
    n = int(rate * seconds)
    body = {"features": {"x0": 4.2, "x1": 6.1, "x2": 3.3}}
    path = f"/v1/predict/sea?log={str(log).lower()}"
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

        async def one(due: float) -> None:
            nonlocal errors
            res = await http.post(path, json=body, headers=headers)
            if res.status_code != 200:
                errors += 1
            lat.append(time.perf_counter() - due)

        for _ in range(200):  # warm the connections and the gateway's code paths
            await one(time.perf_counter())
        lat.clear()
        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            due = t0 + i / rate
            if (ahead := due - time.perf_counter()) > 0:
                await asyncio.sleep(ahead)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return {"log": log, "offered_per_s": rate, "requests": n, "answered_per_s": n / elapsed, "errors": errors,
            "latency_ms": {k: v * 1000 for k, v in pct(lat).items()}}


def serving_cost(s: Settings, tmp: Path, rate: float, seconds: float, calls: int) -> tuple[list[Result], Result]:
    """A learned model served: the gateway under offered load (logging off, then on), then the SDK's predict cost."""
    key = new_key()
    headers = {"X-API-Key": key}
    stack = Stack(s, tmp, key)
    raws = [FeedbackEvent(learner="sea", features=x, label=y, source="bench").to_json() for x, y in sea(2000)]
    asyncio.run(ensure_topics(s.kafka, Topics(s.kafka.topic_prefix).all()))
    try:
        stack.start("feedback")
        stack.start("api")
        paced_producer(s.kafka.bootstrap_servers, Topics(s.kafka.topic_prefix).feedback, raws, 10_000)
        version = asyncio.run(wait_served(stack.url, headers))
        gateway = [asyncio.run(offered_load(stack.url, headers, rate, seconds, log)) for log in (False, True)]
        with sync_online_predictor(s, ["sea"]) as predictor:
            wait_version(predictor, int(version), timeout=120)
            sdk = sdk_predict_cost(predictor, calls)
        return gateway, sdk
    finally:
        stack.stop()


def main(args: argparse.Namespace) -> Result:
    res: Result = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "poll_ms": args.poll_ms}
    prefixes: list[str] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="learnloop-bench-")))
        (tmp / "learners.toml").write_text(LEARNERS)
        broker = stack.enter_context(EmbeddedBroker(log_path=tmp / "broker.log"))
        redis_url = pick_redis(args.redis_url, stack)
        stack.callback(clean_redis, redis_url, prefixes)

        def fresh() -> Settings:
            s = settings_for(broker.bootstrap_servers, redis_url, tmp)
            prefixes.append(s.redis.key_prefix)
            return s

        res["learning"] = [learning_latency(fresh(), tmp, rate, args.seconds, args.poll_ms / 1000)
                           for rate in args.rates]
        res["gateway"], res["sdk_predict"] = serving_cost(fresh(), tmp, args.request_rate, args.request_seconds,
                                                          args.predict_calls)
    return res


def table(r: Result) -> Iterator[str]:
    yield f"learning latency and serving cost, {r['cpus']} CPUs, Python {r['python']}, followers poll every " \
          f"{r['poll_ms']:g} ms (gateway) / {r['poll_ms'] / 5:g} ms (SDK)"
    for row in r["learning"]:
        for via in ("gateway", "sdk"):
            ms = row[f"{via}_ms"]
            shown = f"p50 {ms['p50']:.0f} ms, p99 {ms['p99']:.0f} ms, max {ms['max']:.0f} ms" if ms else "no match"
            yield (f"feedback produced -> first served from a version with it, via {via:<7} at "
                   f"{row['produced_per_s']:,.0f}/s (target {row['rate']:,.0f}/s, {row['events']:,} events): {shown}")
    for g in r["gateway"]:
        ms = g["latency_ms"]
        yield (f"gateway POST /v1/predict, log={'on ' if g['log'] else 'off'}, offered {g['offered_per_s']:,.0f}/s: "
               f"answered {g['answered_per_s']:,.0f}/s, p50 {ms['p50']:.2f} ms, p99 {ms['p99']:.2f} ms, "
               f"errors {g['errors']}")
    sdk = r["sdk_predict"]
    yield (f"predict on one input: River predict_proba_one {sdk['river_us']:.1f} us, SDK predict "
           f"{sdk['sdk_us']:.1f} us (ratio {sdk['ratio']:.2f}; target <= 1.3), SDK predict logged "
           f"{sdk['sdk_logged_us']:.1f} us (ratio {sdk['ratio_logged']:.2f})")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[1000.0, 5000.0], help="feedback events/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each feedback rate is produced")
    ap.add_argument("--poll-ms", type=float, default=5.0, help="gateway follower's pause between predictions")
    ap.add_argument("--request-rate", type=float, default=1000.0, help="predict requests/s offered to the gateway")
    ap.add_argument("--request-seconds", type=float, default=10.0, help="how long they are offered")
    ap.add_argument("--predict-calls", type=int, default=20_000, help="calls timed for the SDK predict cost")
    ap.add_argument("--redis-url", help="default: 127.0.0.1:6379 if it answers, else an embedded Redis")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    return ap.parse_args(argv)


if __name__ == "__main__":
    cli = parse()
    result = main(cli)
    print(json.dumps(result, indent=2) if cli.json else "\n".join(table(result)))
