"""Continuum: program FCFS plus time-to-live KV pinning during tool calls, with CPU offload of what is not pinned.

TTL* = argmax_tau P(duration <= tau) * (T_mean * eta + reload_cost) - tau, with P the empirical CDF of that
tool's past durations (the global CDF until the tool has `min_samples`), T_mean the mean queueing delay a
segment that re-enters without its KV suffers (measured online) and reload_cost the recompute time of the
job's context. Queue order: preempted, then jobs whose pin survived, then program FCFS.

KV that is not pinned (a TTL of 0, an expired pin, a pin evicted under pressure) goes to host memory when the host
tier has room (`offload`), and is discarded otherwise: Continuum's evaluation runs it with LMCache's CPU offload,
and its headline (1.5-2x over InferCept) is with offload. Without it (`offload=False`, the earlier version of this
peer) every unpinned context is recomputed.
"""

from bisect import bisect_right, insort
from dataclasses import dataclass

import numpy as np

from runtime.agents.job import KVState
from runtime.agents.kv import KVAction, KVDecision
from runtime.agents.policy.base import Policy, PolicyContext


@dataclass(frozen=True)
class ContinuumConfig:
    eta: float = 1.0
    min_samples: int = 100
    candidates: int = 64  # quantiles of the CDF tried as TTLs
    offload: bool = True  # unpinned KV to host memory (LMCache's offload) instead of discarding it


class Continuum(Policy):
    name = "continuum"
    key_is_static = True
    wait_key_reads = growth_reads = frozenset()

    def __init__(self, ctx: PolicyContext, config: ContinuumConfig | None = None):
        super().__init__(ctx)
        self.cfg = config or ContinuumConfig()
        self._durations: dict[str, list[float]] = {}
        self._all: list[float] = []
        self._wait_mean = 0.0
        self._wait_n = 0

    def wait_key(self, job):
        rank = 0 if job.preempted else (1 if job.kv is KVState.PRESERVED else 2)
        return (rank, job.arrival_s)

    def on_admit(self, job, now, waited_s):
        if job.seg > 0 and job.kv is not KVState.PRESERVED:
            self._wait_n += 1
            self._wait_mean += (waited_s - self._wait_mean) / self._wait_n

    def on_tool_return(self, job, now, duration_s):
        cat = job.segments[job.seg - 1].api_category
        insort(self._durations.setdefault(cat, []), duration_s)
        insort(self._all, duration_s)

    def ttl_s(self, category: str, reload_s: float) -> float:
        samples = self._durations.get(category, [])
        if len(samples) < self.cfg.min_samples:
            samples = self._all
        if not samples:
            return 0.0
        gain = self._wait_mean * self.cfg.eta + reload_s
        taus = np.quantile(samples, np.linspace(0, 1, self.cfg.candidates))
        best_tau, best = 0.0, 0.0
        for tau in taus:
            value = bisect_right(samples, tau) / len(samples) * gain - tau
            if value > best:
                best_tau, best = float(tau), value
        return best_tau

    def on_tool_call(self, job, now, view):
        ttl = self.ttl_s(job.current.api_category, self.pred.recompute_s(job.kv_tokens))
        return KVDecision(KVAction.PRESERVE, ttl) if ttl > 0 else KVDecision(self._unpinned(job, view))

    def on_pin_expired(self, job, now, view):
        return self._unpinned(job, view)

    def evict_candidates(self, idle, now, view, forced):
        if not forced:
            return []
        ranked = sorted(idle, key=lambda j: -self.remaining_api_s(j, now))
        return [(j, self._unpinned(j, view)) for j in ranked]

    def _unpinned(self, job, view) -> KVAction:
        return KVAction.SWAP if self.cfg.offload and self.swap_ok(job, view) else KVAction.DISCARD
