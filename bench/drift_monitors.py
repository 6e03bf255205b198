"""Drift monitors: detection delay per kind next to ADWIN on the error, false alarms on a stationary
stream, and the CPU cost per event of the input monitor against the learner alone (20 numeric features).

Run by hand, never from tests: ``.venv/bin/python -m bench.drift_monitors [--events N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import deque
from typing import Any

from learners.config import LearnerSpec
from learners.labels import Target
from learners.monitors import InputDriftMonitor, PerformanceEstimator, PredictionDriftMonitor
from learners.online import OnlineLearner

FEATURES = 20


def _x(rng: random.Random, scale: float) -> dict[str, float]:
    return {f"x{k}": rng.gauss(0, scale) for k in range(FEATURES)}


def _y(x: dict[str, float], rng: random.Random) -> bool:
    return x["x0"] + x["x1"] + rng.gauss(0, 0.5) > 0


def delays(shift_at: int, after: int, lag: int, seed: int = 1) -> dict[str, int | None]:
    """Inputs crowd the boundary at ``shift_at``; labels arrive ``lag`` events late. Events until each fires."""
    rng = random.Random(seed)
    learner = OnlineLearner("bench", LearnerSpec())
    inputs, served, estimate = InputDriftMonitor(), PredictionDriftMonitor(), PerformanceEstimator()
    fired: dict[str, int | None] = {"input": None, "prediction": None, "estimated_performance": None, "error": None}
    waiting: deque[tuple[str, dict[str, float], bool, bool]] = deque()
    for i in range(shift_at + after):
        x = _x(rng, 3.0 if i < shift_at else 0.4)
        proba = learner.predict_proba_one(x) or {True: 0.5, False: 0.5}
        predicted = max(proba, key=proba.__getitem__)
        signals = [*inputs.update(x), *served.update(predicted, proba[predicted], "v1"),
                   *estimate.observe_prediction(f"p{i}", predicted, proba[predicted])]  # fmt: skip
        for s in signals:
            if i >= shift_at and fired[s.kind] is None:
                fired[s.kind] = i - shift_at
        waiting.append((f"p{i}", x, predicted, _y(x, rng)))
        if len(waiting) > lag:
            pid, ox, opred, label = waiting.popleft()
            estimate.observe_label(pid, correct=opred == label)
            if learner.learn_one(ox, Target(y=label, weight=1.0)).drift is not None and i >= shift_at:
                fired["error"] = fired["error"] if fired["error"] is not None else i - shift_at
    return fired


def false_alarms(events: int, seed: int = 2) -> dict[str, float]:
    """Alarms per 1M events of the input and prediction monitors on a stationary stream."""
    rng = random.Random(seed)
    inputs, served = InputDriftMonitor(), PredictionDriftMonitor()
    for _ in range(events):
        x = _x(rng, 1.0)
        inputs.update(x)
        served.update(rng.random() < 0.3, rng.uniform(0.5, 1.0), "v1")
    per = 1_000_000 / events
    return {"input": inputs.drifts * per, "prediction": served.drifts * per}


def cpu_cost(events: int, seed: int = 3) -> dict[str, float]:
    """Seconds per event of learn_one alone and of the input monitor alone; their ratio."""
    rng = random.Random(seed)
    stream = [(x, Target(y=_y(x, rng), weight=1.0)) for x in (_x(rng, 1.0) for _ in range(events))]
    learner, monitor = OnlineLearner("bench", LearnerSpec()), InputDriftMonitor()
    t0 = time.process_time()
    for x, target in stream:
        learner.learn_one(x, target)
    t1 = time.process_time()
    for x, _ in stream:
        monitor.update(x)
    t2 = time.process_time()
    learn, watch = (t1 - t0) / events, (t2 - t1) / events
    return {"learner_us": learn * 1e6, "monitor_us": watch * 1e6, "extra": watch / learn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per measurement")
    parser.add_argument("--lag", type=int, default=5000, help="events between a prediction and its label")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "delay_events": delays(shift_at=args.events // 2, after=args.events // 2, lag=args.lag),
        "false_alarms_per_1m": false_alarms(args.events),
        "cpu": cpu_cost(min(args.events, 50_000)),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print("detection delay (events after the shift; None: not detected):", out["delay_events"])
    print("false alarms per 1M stationary events:", out["false_alarms_per_1m"])
    cpu = out["cpu"]
    print(f"CPU per event: learner {cpu['learner_us']:.1f} us, input monitor ({FEATURES} numeric features) "
          f"{cpu['monitor_us']:.1f} us, extra {cpu['extra']:.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
