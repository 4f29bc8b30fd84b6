"""Astraea: Stateful-MLFQ over jobs, HRRN within a queue, and the watermark KV manager.

Levels move on token cost (work received), not time slices: a segment that costs more than its queue's quota
marks the job compute-intensive and demotes it; a segment that yields to a tool within its quota marks it
I/O-intensive and promotes it. Inside a queue, segments are ordered by the response ratio
(W(job) + T_proc) / T_proc, where W is the job's accumulated waiting time over all its segments (history) and
T_proc the predicted service time of this segment (future). A job in any lower queue whose ratio passes the aging
threshold returns to Q0 (the paper ages only the lowest queue: under sustained overload a job demoted once, to any
queue, otherwise waits behind every Q0 job, new ones included, for as long as the overload lasts). The batch is
packed in that order while it fits in KV memory.

Within a queue, jobs already in flight (they hold KV, resident or swapped, and history) go before jobs that have
not started: when KV memory is the bottleneck, starting a new job spreads the same memory over more resident
jobs and slows every one of them, which is how HRRN alone loses to plain job-FCFS on long-context agents
(measured: SWE mix at 4x load, 324 s vs 168 s average JCT; see docs/ARCHITECTURE.md). New jobs still rank by
HRRN among themselves, and aging bounds how long they can be held back.

Token cost is counted in decode-token equivalents: generated tokens plus prefilled tokens scaled by how much
cheaper a prefill token is than a decode step, so that a long prompt alone does not demote a job.
"""

from dataclasses import dataclass

from runtime.agents.kv import KVDecision, WatermarkKVManager, astraea_waste
from runtime.agents.policy.base import Policy, PolicyContext, SegmentStats


@dataclass(frozen=True)
class AstraeaConfig:
    num_queues: int = 4
    base_quota_tokens: float = 256.0  # token cost quota of Q0; Qk has base * growth^k
    quota_growth: float = 4.0
    aging_ratio: float = 16.0  # response ratio at which a job in a lower queue moves back to Q0
    high_watermark: float = 0.9
    t_proc_includes_api: bool = False
    job_level_hrrn: bool = True  # T_proc = this segment x predicted remaining segments (False: this segment only)

    def __post_init__(self):
        if self.num_queues < 1:
            raise ValueError(f"num_queues must be >= 1, got {self.num_queues}")
        if self.base_quota_tokens <= 0 or self.quota_growth < 1:
            raise ValueError("base_quota_tokens must be > 0 and quota_growth >= 1")
        if self.aging_ratio <= 1:
            raise ValueError(f"aging_ratio must be > 1, got {self.aging_ratio}")
        if not 0.0 < self.high_watermark <= 1.0:
            raise ValueError(f"high_watermark must be in (0, 1], got {self.high_watermark}")


class AstraeaKV(Policy):
    """Astraea's KV manager without its queues: at a tool call, preserve below the high watermark, else the
    option of least waste; under pressure, give up first the pins whose keeping wastes most; admission reserves
    the segment's expected output. Separate so that the clairvoyant bound can feed it true durations and order
    jobs its own way."""

    packs = True
    evicts_for_admission = True
    growth_reads = frozenset({"outputs"})

    def __init__(self, ctx: PolicyContext, high_watermark: float):
        super().__init__(ctx)
        self.kv = WatermarkKVManager(high_watermark)

    def tool_s(self, job) -> float:
        """How long the tool call `job` is entering will take (predicted by its category)."""
        return self.pred.api_s(job.current.api_category)

    def expected_output_tokens(self, job) -> float:
        return self.pred.output_tokens(job)

    def growth_tokens(self, job):
        # Memory-fit packing counts the expected output, so a packed batch does not preempt itself later.
        return max(int(round(self.expected_output_tokens(job))) - job.seg_generated, 0)

    def _waste(self, job, t_api, view):
        return astraea_waste(t_api, job.kv_tokens, view.batch_tokens, self.pred.recompute_s(job.kv_tokens),
                             self.swap_s(job, view), self.profile.kv_bytes_per_token)

    def on_tool_call(self, job, now, view):
        action = self.kv.decide(view, t_api=self.tool_s(job), c_self=job.kv_tokens,
                                t_recompute=self.pred.recompute_s(job.kv_tokens), t_swap=self.swap_s(job, view),
                                bytes_per_token=self.profile.kv_bytes_per_token)
        return KVDecision(action)

    def evict_candidates(self, idle, now, view, forced):
        return self.rank_by_waste(idle, now, view, forced, self._waste)


class Astraea(AstraeaKV):
    name = "astraea"

    def __init__(self, ctx: PolicyContext, config: AstraeaConfig | None = None):
        self.cfg = config or AstraeaConfig()
        super().__init__(ctx, self.cfg.high_watermark)
        self._prefill_weight = ctx.profile.cost.token_s / max(self.pred.decode_s_per_token, 1e-12)

    # ------------------------------------------------------------------------------ queues
    def quota(self, level: int) -> float:
        return self.cfg.base_quota_tokens * self.cfg.quota_growth ** level

    def token_cost(self, prefill_tokens: int, output_tokens: int) -> float:
        return output_tokens + prefill_tokens * self._prefill_weight

    def on_segment_done(self, job, now, stats: SegmentStats):
        if self.token_cost(stats.prefill_tokens, stats.output_tokens) > self.quota(job.level):
            job.level = min(job.level + 1, self.cfg.num_queues - 1)
        elif not job.is_last_segment:
            job.level = max(job.level - 1, 0)

    def t_proc(self, job) -> float:
        return self.per_state(job, "astraea_t_proc", self._t_proc)

    def _t_proc(self, job) -> float:
        t = self.pred.priced_compute_s(job)
        if self.cfg.job_level_hrrn:
            t *= self.pred.remaining_segments(job)
        if self.cfg.t_proc_includes_api and not job.is_last_segment:
            t += self.pred.api_s(job.current.api_category)
        return max(t, 1e-6)

    def wait_key(self, job):
        return self.t_proc(job), self._not_started(job)

    def order(self, ready, now, wait_key=None):
        wk = wait_key or self.wait_key
        keyed = []
        for i, j in enumerate(ready):
            t, not_started = wk(j)
            rr = self._aged(j, now, t)
            keyed.append((j.level, not_started, -rr, t, j.arrival_s, i, j))  # i: ties keep ready's order
        keyed.sort()
        return [k[6] for k in keyed]

    def order_groups(self, ready, now, wait_key=None):
        # By (queue, not started): the jobs of a queue that have not started (most of an overloaded queue) are
        # ranked by the clock only when an admission pass reaches them. A job in a lower queue is aged first, as
        # `order` would age it, since that moves it to another group.
        wk = wait_key or self.wait_key
        groups: dict[tuple[int, bool], list] = {}
        for j in ready:
            level = j.level
            if level > 0:
                self._aged(j, now, wk(j)[0])
                level = j.level
            groups.setdefault((level, self._not_started(j)), []).append(j)
        return [groups[k] for k in sorted(groups)]

    def rank(self, job, now, wait_key):
        t, not_started = wait_key(job)
        return (job.level, not_started, -(job.waited_now(now) + t) / t, t, job.arrival_s)

    def _aged(self, job, now, t) -> float:
        """The job's response ratio; a job in a lower queue whose ratio passed the aging threshold returns to Q0."""
        rr = (job.waited_now(now) + t) / t
        if job.level > 0 and rr > self.cfg.aging_ratio:
            job.level = 0
        return rr

    @staticmethod
    def _not_started(job) -> bool:
        return job.seg == 0 and job.seg_generated == 0 and not job.preempted
