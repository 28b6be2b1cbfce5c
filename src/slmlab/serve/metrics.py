"""Prometheus metrics of one server (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series double the output and say nothing a scraper needs

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slmlab_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("slmlab_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("slmlab_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("slmlab_generated_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("slmlab_queue_depth", "Items waiting for the inference engine", registry=r)
        self.train_queue_depth = Gauge("slmlab_train_queue_depth", "Training jobs waiting", registry=r)
        self.train_steps = Counter("slmlab_train_steps", "Online training steps by result", ["result"], registry=r)
        self.weight_version = Gauge("slmlab_weight_version", "Current weight version", registry=r)
        self.batch_rows = Histogram("slmlab_batch_rows", "Rows per decoding batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))

    def render(self) -> bytes:
        return generate_latest(self.registry)
