"""Autellix: program-level least attained service.

A call's priority is the service its program has already received, binned into MLFQ queues; within a queue,
calls are served in arrival order. Anti-starvation promotes a program to the top queue once
(W_program + W_call) / (T_program + T_call) >= beta. No KV is kept across tool calls.
"""

from bisect import bisect_right
from dataclasses import dataclass

from runtime.agents.policy.base import Policy, PolicyContext


@dataclass(frozen=True)
class PlasConfig:
    thresholds_s: tuple[float, ...] = (1.0, 4.0, 16.0)  # attained service separating the K=4 queues
    beta: float = 8.0

    def __post_init__(self):
        if list(self.thresholds_s) != sorted(set(self.thresholds_s)):
            raise ValueError(f"thresholds_s must be strictly increasing, got {self.thresholds_s}")


class Plas(Policy):
    name = "plas"
    growth_reads = frozenset()

    def __init__(self, ctx: PolicyContext, config: PlasConfig | None = None):
        super().__init__(ctx)
        self.cfg = config or PlasConfig()

    def _bin(self, attained_s: float) -> int:
        return bisect_right(self.cfg.thresholds_s, attained_s)

    def wait_key(self, job):
        return self.per_state(job, "compute_s", self.pred.compute_s), self._bin(job.attained_s)

    def rank(self, job, now, wait_key):
        t_call, level = wait_key(job)
        starving = job.waited_now(now) / max(job.attained_s + t_call, 1e-6) >= self.cfg.beta
        return (0 if starving else level, job.ready_since)
