"""Prometheus metrics of one server, in their own registry (two servers in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RATES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gemma_keras_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "gemma_keras_prompt_tokens", "Prompt tokens of admitted requests", registry=r
        )
        self.generated_tokens = Counter("gemma_keras_generated_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("gemma_keras_queue_depth", "Requests waiting for a batch row", registry=r)
        self.active_rows = Gauge("gemma_keras_active_rows", "Rows decoding now", registry=r)
        self.ttft = Histogram(
            "gemma_keras_time_to_first_token_seconds",
            "From arrival to the first generated token",
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "gemma_keras_tokens_per_second",
            "Decode speed of each finished choice, after its first token",
            buckets=_RATES,
            registry=r,
        )
        self.duration = Histogram(
            "gemma_keras_request_duration_seconds",
            "From arrival to the last token",
            buckets=_LATENCY,
            registry=r,
        )
        self.late_compiles = Counter(
            "gemma_keras_compiles_after_ready",
            "Model shapes compiled while serving, after the warm-up (each stalls the batch seconds)",
            registry=r,
        )

    def engine_state(self, active: int, waiting: int) -> None:
        self.active_rows.set(active)
        self.queue_depth.set(waiting)

    def finished(self, submitted: float, first_token: float | None, end: float, tokens: int) -> None:
        self.generated_tokens.inc(tokens)
        self.duration.observe(end - submitted)
        if first_token is not None:
            self.ttft.observe(first_token - submitted)
            if tokens > 1 and end > first_token:
                self.tokens_per_second.observe((tokens - 1) / (end - first_token))

    def render(self) -> bytes:
        return generate_latest(self.registry)
