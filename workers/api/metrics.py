"""Prometheus metrics of the gateway, in a registry of its own (one per app, so tests can build many)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED = "unmatched"
"""The route label of requests no route matched: raw paths would make the label set unbounded."""


class ApiMetrics:
    """Request counts and latency by route and status; events produced by topic, rejected by reason."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "learnloop_api_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "learnloop_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.produced = Counter(
            "learnloop_api_events_produced",
            "Events acknowledged by the broker, by topic.",
            ["topic"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "learnloop_api_events_rejected",
            "Rejected input, by reason: one per invalid event of a batch, one per request refused whole.",
            ["reason"],
            registry=self.registry,
        )

        self.predictions = Counter(
            "learnloop_api_predictions",
            "Predictions answered, by learner.",
            ["learner"],
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


class RequestMetrics:
    """ASGI middleware: times every HTTP request and labels it with the route that matched."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The router writes the matched route into this same scope dict.
            route = getattr(scope.get("route"), "path", UNMATCHED)
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - start)
