"""Prometheus metrics for /metrics, named as vLLM names them with the prefix `ember:`.

Engine state (running and waiting requests, KV-cache usage, prefix-cache queries and hits,
preemptions, prompt and generation tokens) is read from `engine.stats()` when Prometheus
scrapes, so it costs nothing per request. Latencies come from each finished request's
`RequestOutput.metrics` (monotonic times stamped by the engine): time to first token, the mean
time between its output tokens, and end to end. Each app has its own registry, so several
servers (tests) can live in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; spans a tiny model on a GPU (ms) to a long queue on a CPU (minutes).
_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
)  # fmt: skip
_TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ServerMetrics:
    def __init__(self, engine, model_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        self._model_name = model_name
        labels = ["model_name"]
        self.time_to_first_token = Histogram(
            "ember:time_to_first_token_seconds",
            "Time from a request's arrival to its first output token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(model_name)
        self.inter_token_latency = Histogram(
            "ember:inter_token_latency_seconds",
            "Mean time between consecutive output tokens, one observation per request.",
            labels,
            buckets=_TOKEN_LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(model_name)
        self.e2e_request_latency = Histogram(
            "ember:e2e_request_latency_seconds",
            "Time from a request's arrival to its last output.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(model_name)
        self._requests_finished = Counter(
            "ember:request_success",
            "Requests (one per prompt) that finished, by finish reason of their samples.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        self.registry.register(_EngineStatsCollector(engine, model_name))

    def observe_finished(self, output) -> None:
        """Records one finished RequestOutput (a prompt with all its samples done)."""
        for completion in output.outputs:
            reason = completion.finish_reason or "abort"
            self._requests_finished.labels(self._model_name, reason).inc()
        timing = getattr(output, "metrics", None)
        if timing is None or timing.first_token_time is None:
            return
        self.time_to_first_token.observe(timing.first_token_time - timing.arrival_time)
        if timing.finished_time is not None:
            self.e2e_request_latency.observe(timing.finished_time - timing.arrival_time)
        num_intervals = (timing.num_generation_tokens or 0) - 1
        if num_intervals > 0 and timing.last_token_time is not None:
            mean = (timing.last_token_time - timing.first_token_time) / num_intervals
            self.inter_token_latency.observe(mean)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# (metric name, engine.stats() key, help text)
_STATE_GAUGES = (
    ("ember:num_requests_running", "num_running", "Requests in the running batch."),
    ("ember:num_requests_waiting", "num_waiting", "Requests waiting to be scheduled."),
    ("ember:kv_cache_usage_perc", "kv_cache_usage", "Fraction of KV-cache blocks in use (0..1)."),
)
_TOTAL_COUNTERS = (
    ("ember:prefix_cache_queries", "num_prefix_cache_queries",
     "Prompt tokens looked up in the prefix cache."),
    ("ember:prefix_cache_hits", "num_prefix_cache_hits",
     "Prompt tokens found in the prefix cache."),
    ("ember:num_preemptions", "num_preemptions", "Requests preempted (recomputed later)."),
    ("ember:prompt_tokens", "num_prompt_tokens", "Prompt tokens processed."),
    ("ember:generation_tokens", "num_generation_tokens", "Tokens generated."),
)  # fmt: skip


class _EngineStatsCollector:
    """Reads engine.stats() at scrape time: gauges for the current state, counters for the
    engine's cumulative totals, and the prefix-cache hit rate since the engine started."""

    def __init__(self, engine, model_name: str):
        self._engine = engine
        self._model_name = model_name

    def describe(self):
        return []  # the values need a live engine; nothing to read at registration

    def collect(self):
        stats = self._engine.stats()
        for name, key, documentation in _STATE_GAUGES:
            yield self._family(GaugeMetricFamily, name, documentation, stats[key])
        for name, key, documentation in _TOTAL_COUNTERS:
            yield self._family(CounterMetricFamily, name, documentation, stats[key])
        num_queries = stats["num_prefix_cache_queries"]
        hit_rate = stats["num_prefix_cache_hits"] / num_queries if num_queries else 0.0
        yield self._family(
            GaugeMetricFamily,
            "ember:prefix_cache_hit_rate",
            "Prefix-cache hits / queries (in tokens) since the engine started.",
            hit_rate,
        )

    def _family(self, kind, name: str, documentation: str, value: float):
        family = kind(name, documentation, labels=["model_name"])
        family.add_metric([self._model_name], float(value))
        return family
