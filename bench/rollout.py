"""Rollouts: time from registration to promotion, false promotions in A/A rollouts, detection delay.

    .venv/bin/python -m bench.rollout                 # all three (a few minutes)
    .venv/bin/python -m bench.rollout --skip-controller --repeats 200

1. **Registration → promotion** goes through the real controller (``learnloop worker rollouts``
   as a subprocess, an embedded broker, Redis, SQLite and an MLflow registry in a temp folder): a
   challenger is announced, an app sends predictions routed as serving routes them and their labels
   one batch later, at ``--rate`` labelled predictions per second, and the clock stops when the
   rollout is promoted.
2. **A/A false promotion rate**: ``--repeats`` rollouts of two equal versions through
   :func:`learners.rollout.decide`, read after every ``--check-every`` labels, each until it ends
   or its final step has seen ``--max-final-labels`` labels. Must be at most ``alpha``.
3. **Detection delay**: a challenger ``--worse`` points below the champion, on a 50/50 A/B split;
   labels (and seconds at ``--rate``) until it is rolled back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from learners.rollout import RolloutPolicy, RolloutStats, assign, decide, outcome


def simulate(policy: RolloutPolicy, p_champion: float, p_challenger: float, *, rng: random.Random,
             rate: float, check_every: int, max_final_labels: int) -> tuple[str, int]:
    """One rollout with labels at ``rate``/s; (the final action, labels seen when it was taken)."""
    stats = RolloutStats(alpha=policy.alpha)
    step, step_start, labels, final_labels = 0, 0.0, 0, 0
    while True:
        share = policy.share(step) / 100.0
        for _ in range(check_every):
            arm = "challenger" if rng.random() < share else "champion"
            if policy.mode == "shadow":
                a = outcome(policy.metric, True, rng.random() < p_champion, None)
                b = outcome(policy.metric, True, rng.random() < p_challenger, None)
                stats.champion.labelled(a)
                stats.challenger.labelled(b)
                stats.pair(a, b)
            else:
                p = p_challenger if arm == "challenger" else p_champion
                stats.arm(arm).labelled(outcome(policy.metric, True, rng.random() < p, None))
            labels += 1
            final_labels += step == policy.final_step
        now = labels / rate
        d = decide(policy, stats, step=step, step_age_s=now - step_start)
        if d.action == "advance":
            step, step_start = step + 1, now
            stats.new_step()
        elif d.action != "hold":
            return d.action, labels
        elif step == policy.final_step and final_labels >= max_final_labels:
            return "inconclusive", labels


def pure(args: argparse.Namespace) -> dict[str, Any]:
    policy = RolloutPolicy(mode="canary", steps=args.steps, min_labels=args.min_labels, alpha=args.alpha,
                           max_step_duration_s=1e12)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    aa = [simulate(policy, args.p, args.p, rng=rng, rate=args.rate, check_every=args.check_every,
                   max_final_labels=args.max_final_labels)[0] for _ in range(args.repeats)]
    # Detection on an A/B split: at a 100 % final step the champion gets no new labels to compare with.
    ab = RolloutPolicy(mode="ab", steps=[50.0], min_labels=args.min_labels, alpha=args.alpha, max_step_duration_s=1e12)
    worse = [simulate(ab, args.p, args.p - args.worse, rng=rng, rate=args.rate, check_every=args.check_every,
                      max_final_labels=args.max_final_labels) for _ in range(args.repeats)]
    delays = [n for action, n in worse if action == "rollback"]
    return {
        "policy": policy.model_dump(mode="json"),
        "aa_rollouts": len(aa),
        "aa_false_promotion_rate": aa.count("promote") / len(aa),
        "aa_outcomes": {a: aa.count(a) for a in sorted(set(aa))},
        "worse_by": args.worse,
        "worse_rolled_back": len(delays) / len(worse),
        "worse_outcomes": {a: [x for x, _ in worse].count(a) for a in sorted({x for x, _ in worse})},
        "detection_labels_median": statistics.median(delays) if delays else None,
        "detection_labels_p90": sorted(delays)[int(0.9 * (len(delays) - 1))] if delays else None,
        "detection_s_median_at_rate": statistics.median(delays) / args.rate if delays else None,
        "simulation_s": round(time.perf_counter() - t0, 2),
    }


async def through_controller(args: argparse.Namespace) -> dict[str, Any]:
    from schemas import FeedbackEvent, ModelUpdate, PredictionEvent
    from streams.config import KafkaConfig
    from streams.producer import EventProducer
    from workers.rollouts.store import RolloutStore
    from workers.settings import load_settings
    from workers.stack.embedded import EmbeddedBroker, EmbeddedRedis
    from workers.stack.processes import spawn, terminate
    from workers.store.migrate import migrated_engine
    from workers.trainer.registry import ModelRegistry

    model = "bench-text"
    with tempfile.TemporaryDirectory(prefix="learnloop-bench-rollout-") as tmp_s, EmbeddedBroker() as broker, \
            EmbeddedRedis() as redis:
        tmp = Path(tmp_s)
        (tmp / "learners.toml").write_text(
            f"[rollouts.{model}]\nmode = \"canary\"\nsteps = {json.dumps(args.steps)}\n"
            f"min_labels = {args.min_labels}\nalpha = {args.alpha}\n[rollouts.{model}.guardrails]\n"
            "min_requests = 1000000000\n")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LEARNLOOP_")},
               "LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers, "LEARNLOOP_REDIS__URL": redis.url,
               "LEARNLOOP_DATA_DIR": str(tmp / "data"), "LEARNLOOP_LEARNERS_FILE": str(tmp / "learners.toml"),
               "LEARNLOOP_METRICS__PORT": "0", "LEARNLOOP_ROLLOUT__TICK_S": "0.5", "PYTHONUNBUFFERED": "1"}
        settings = load_settings(kafka=KafkaConfig(bootstrap_servers=broker.bootstrap_servers),
                                 redis={"url": redis.url}, data_dir=tmp / "data")
        registry = ModelRegistry(settings.mlflow, settings.data_dir)
        registry.client.create_registered_model(model)
        for _ in range(2):
            registry.client.create_model_version(model, source=(tmp / "data").as_uri())
        registry.set_alias(model, "champion", "1")
        store = RolloutStore(migrated_engine(settings.database, settings.data_dir))
        proc = spawn([sys.executable, "-m", "workers.cli", "worker", "rollouts"], log_path=tmp / "rollouts.log",
                     env=env, cwd=Path(__file__).resolve().parents[1])
        try:
            while len(store.offsets()) < 3 * settings.kafka.partitions:
                if proc.poll() is not None:
                    tail = (tmp / "rollouts.log").read_text()[-2000:]
                    raise SystemExit(f"controller exited {proc.returncode}: {tail}")
                await asyncio.sleep(0.1)
            rng = random.Random(args.seed)
            async with EventProducer(settings.kafka) as producer:
                t0 = time.perf_counter()
                await producer.send(ModelUpdate(source="bench", model=model, version="2", kind="fine-tuned",
                                                uri=f"models:/{model}/2", alias="challenger", rollout=True))
                await producer.flush()
                sent, pending, batch = 0, [], max(1, int(args.rate / 4))
                while True:
                    rows = store.rollouts(model=model, limit=1)
                    r = rows[0] if rows else None
                    if r is not None and r["state"] not in ("running", "paused"):
                        break
                    if time.perf_counter() - t0 > args.timeout:
                        raise SystemExit(f"no decision within {args.timeout}s: {r}")
                    for pid, truth in pending:  # last round's labels: their predictions were sent before
                        await producer.send(FeedbackEvent(source="bench", learner=model, prediction_id=pid,
                                                          label=truth))
                    pending = []
                    if r is not None:
                        for _ in range(batch):
                            sent += 1
                            subject = f"u{rng.randrange(10**9)}"
                            arm = assign(subject, r["share"], salt=r["id"])
                            truth = rng.random() < 0.5
                            right = rng.random() < (args.p if arm == "champion" else args.p + args.better)
                            await producer.send(PredictionEvent(
                                source="bench", prediction_id=f"p{sent}", learner=model, model=model, text="x",
                                prediction=truth if right else not truth, model_version=r[f"{arm}_version"],
                                rollout_id=r["id"], arm=arm, subject_id=subject, latency_ms=1.0))
                            pending.append((f"p{sent}", truth))
                    await producer.flush()
                    await asyncio.sleep(batch / args.rate)
                elapsed = time.perf_counter() - t0
        finally:
            terminate([proc], 30)
    return {"registration_to_decision_s": round(elapsed, 2), "final_state": r["state"] if r else None,
            "decisions": [d["action"] for d in (r or {}).get("decisions", [])], "predictions_sent": sent,
            "labelled_rate_per_s": args.rate, "champion_accuracy": args.p, "challenger_accuracy": args.p + args.better}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="labelled predictions per second")
    # The example policy; the promotion decision is taken at 50 % (RolloutPolicy.final_step).
    ap.add_argument("--steps", type=float, nargs="+", default=[5.0, 25.0, 50.0, 100.0])
    ap.add_argument("--min-labels", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--p", type=float, default=0.80, help="champion accuracy")
    ap.add_argument("--better", type=float, default=0.10, help="challenger advantage in the controller run")
    ap.add_argument("--worse", type=float, default=0.05, help="challenger deficit for the detection delay")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--check-every", type=int, default=20, help="labels between two reads of the test")
    ap.add_argument("--max-final-labels", type=int, default=20_000)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--skip-controller", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"simulation": pure(args)}
    if not args.skip_controller:
        out["controller"] = asyncio.run(through_controller(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for part, numbers in out.items():
        print(f"[{part}]")
        for k, v in numbers.items():
            print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
