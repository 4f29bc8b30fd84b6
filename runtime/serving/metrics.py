"""Prometheus metrics of the agent service, kept by the GlobalScheduler actor (which sees every segment) and
served as text by the ingress's `/metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300)
JCT_BUCKETS = (0.5, 1, 2, 5, 10, 20, 60, 120, 300, 600, 1800)
WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)


class EngineCollector:
    """Engine-side values as last reported (counters restart with an engine process, as Prometheus expects)."""

    def __init__(self):
        self.reports: dict[str, dict] = {}

    def collect(self):
        usage = GaugeMetricFamily("agentriver_engine_kv_usage", "Fraction of the engine's KV pool in use",
                                  labels=["engine"])
        running = GaugeMetricFamily("agentriver_engine_requests", "Requests in the engine by vLLM state",
                                    labels=["engine", "state"])
        alive = GaugeMetricFamily("agentriver_engine_alive", "1 while the engine answers", labels=["engine"])
        tokens = CounterMetricFamily("agentriver_engine_generation_tokens", "Output tokens the engine generated",
                                     labels=["engine"])
        kv = CounterMetricFamily("agentriver_kv_decisions", "KV decisions at tool calls and releases later",
                                 labels=["engine", "action", "cause"])
        for name, r in sorted(self.reports.items()):
            alive.add_metric([name], 1.0 if r.get("alive") else 0.0)
            if "kv_usage" not in r:
                continue
            usage.add_metric([name], r["kv_usage"])
            running.add_metric([name, "running"], r["running"])
            running.add_metric([name, "waiting"], r["waiting"])
            tokens.add_metric([name], r.get("generated_tokens", 0))
            for (action, cause), n in r["kv_events"]:
                if action != "resume":
                    kv.add_metric([name, action, cause], n)
        yield from (usage, running, alive, tokens, kv)


class SchedulerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.queue = Gauge("agentriver_queue_segments", "Ready segments waiting for an engine, by MLFQ level",
                           ["level"], registry=self.registry)
        self.sessions = Gauge("agentriver_sessions", "Open agent sessions (jobs)", registry=self.registry)
        self.segment = Histogram("agentriver_segment_seconds", "Segment latency: queued + served",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queued = Histogram("agentriver_segment_queue_seconds", "Time a segment waited for an engine",
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        self.jct = Histogram("agentriver_job_completion_seconds", "Job completion time of closed sessions",
                             buckets=JCT_BUCKETS, registry=self.registry)
        self.journal_write = Histogram("agentriver_scheduler_journal_write_seconds",
                                       "One group write of changed sessions to the scheduler's checkpoint",
                                       buckets=WRITE_BUCKETS, registry=self.registry)
        self.engines = EngineCollector()
        self.registry.register(self.engines)

    def set_queue(self, by_level: dict[int, int], levels: int) -> None:
        for level in range(max(levels, max(by_level, default=-1) + 1)):
            self.queue.labels(level=str(level)).set(by_level.get(level, 0))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Families:
    """A collector that yields families already built (what `merge_metrics` assembled)."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        yield from self.families


def merge_metrics(texts: list[bytes]) -> bytes:
    """One exposition of every scheduler shard's metrics (`runtime.serving.shards`): shard k's samples labelled
    shard="k" (Prometheus sums across shards: `sum without (shard)`). A single shard's text is returned as is."""
    if len(texts) == 1:
        return texts[0]
    merged: dict[str, Metric] = {}
    for shard, text in enumerate(texts):
        for family in text_string_to_metric_families(text.decode()):
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            into.samples += [s._replace(labels={**s.labels, "shard": str(shard)}) for s in family.samples]
    registry = CollectorRegistry()
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry)
