"""Autellix: program-level least attained service.

A call's priority is the service its program has already received, binned into MLFQ queues; within a queue,
calls are served in arrival order. Anti-starvation promotes a program to the top queue once
(W_program + W_call) / (T_program + T_call) >= beta. No KV is kept across tool calls.
"""

from bisect import bisect_right
from dataclasses import dataclass
from operator import attrgetter

from runtime.agents.policy.base import Policy, PolicyContext

_by_ready = attrgetter("ready_since")
_RUN = 16  # calls ranked at a time (`Plas.order_groups`)


@dataclass(frozen=True)
class PlasConfig:
    thresholds_s: tuple[float, ...] = (1.0, 4.0, 16.0)  # attained service separating the K=4 queues
    beta: float = 8.0

    def __post_init__(self):
        if list(self.thresholds_s) != sorted(set(self.thresholds_s)):
            raise ValueError(f"thresholds_s must be strictly increasing, got {self.thresholds_s}")


class Plas(Policy):
    name = "plas"
    wait_key_reads = frozenset({"speed", "outputs"})
    growth_reads = frozenset()

    def __init__(self, ctx: PolicyContext, config: PlasConfig | None = None):
        super().__init__(ctx)
        self.cfg = config or PlasConfig()

    def _bin(self, attained_s: float) -> int:
        return bisect_right(self.cfg.thresholds_s, attained_s)

    def wait_key(self, job):
        return self.per_state(job, "plas_t_call", self.pred.priced_compute_s), self._bin(job.attained_s)

    def rank(self, job, now, wait_key):
        t_call, level = wait_key(job)
        return (self._queue(job, now, t_call, level), job.ready_since)

    def _queue(self, job, now, t_call, level) -> int:
        """The job's queue; a starving job goes to the top one."""
        if level and job.waited_now(now) / max(job.attained_s + t_call, 1e-6) >= self.cfg.beta:
            return 0
        return level

    def order(self, ready, now, wait_key=None):
        return [j for group in self.order_groups(ready, now, wait_key) for j in group]

    def order_groups(self, ready, now, wait_key=None):
        # `rank` orders by queue, then by when the call became ready. Walking the calls in that second order, once
        # per queue and a run of them at a time, yields groups that each rank wholly before the next, and the
        # starvation test, most of the cost of ranking an overloaded queue, runs only on the calls walked: a
        # pass that does not pack looks at the first few.
        wk = wait_key or self.wait_key
        by_ready = sorted(ready, key=_by_ready)
        queues: list[int | None] = [None] * len(by_ready)
        for q in range(len(self.cfg.thresholds_s) + 1):
            for start in range(0, len(by_ready), _RUN):
                group = []
                for i in range(start, min(start + _RUN, len(by_ready))):
                    if queues[i] is None:
                        t_call, level = wk(by_ready[i])
                        queues[i] = self._queue(by_ready[i], now, t_call, level)
                    if queues[i] == q:
                        group.append(by_ready[i])
                if group:
                    yield group
