"""Where a training job's time goes: named stages, timed, and the heavy imports started before the first job.

The stages are ``startup`` (waiting for the heavy imports, fetching the champion), ``dataset``, ``training``,
``evaluation``, ``registration`` and ``announce``; a job records them in its result (``timings_s``), in its
MLflow run (``stage_<name>_s``) and in ``learnloop_training_stage_seconds``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Iterator

__all__ = ["STAGES", "HeavyImports", "StageClock"]

log = logging.getLogger(__name__)

STAGES = ("startup", "dataset", "training", "evaluation", "registration", "announce")
# What a job needs that a worker waiting for its first request does not: several seconds of imports on a
# small machine, which the worker otherwise pays either before it is ready or inside the first job.
HEAVY_MODULES = ("torch", "transformers", "peft", "learners.textclf", "learners.training_loop")


class StageClock:
    """Seconds per stage, in the order they ran.

    >>> clock = StageClock()
    >>> with clock("dataset"):
    ...     pass
    >>> list(clock.seconds)
    ['dataset']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.monotonic() - t0, 3)


class HeavyImports:
    """Imports ``modules`` in a background thread; ``wait()`` blocks until they are in and re-raises a failure.

    >>> imports = HeavyImports(("json",)).start()
    >>> imports.wait() >= 0.0
    True
    """

    def __init__(self, modules: tuple[str, ...] = HEAVY_MODULES) -> None:
        self.modules = modules
        self.seconds: float | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="learnloop-heavy-imports", daemon=True)

    def start(self) -> HeavyImports:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            for name in self.modules:
                importlib.import_module(name)
        except BaseException as exc:  # re-raised in the job that needs them, where it fails the job with its reason
            self._error = exc
        self.seconds = round(time.monotonic() - t0, 2)
        log.info("training imports ready in %.2f s%s", self.seconds, f" (failed: {self._error})" if self._error else "")

    def wait(self) -> float:
        """Seconds this call waited (0 when the imports were already in)."""
        t0 = time.monotonic()
        if self._thread.ident is None:  # never started: import here
            self._run()
        else:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return time.monotonic() - t0
