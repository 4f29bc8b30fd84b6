"""The one interface every scheduling policy implements, for the simulator and the real engine alike.

An engine asks a policy four things: in what order to admit ready segments (`order`), whether to keep admitting
past a segment that does not fit (`packs`), what to do with a job's KV when it calls a tool (`on_tool_call`),
and which idle KV to give up when memory runs short (`evict_candidates`). Everything else (batching, block
allocation, transfers) is the engine's business, so a policy is a few dozen lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from runtime.agents.costmodel import DeploymentProfile
from runtime.agents.job import Job, KVState, Phase
from runtime.agents.kv import KVAction, KVDecision, MemoryView, Waste, blocks_for
from runtime.agents.predictor import ESTIMATES, Predictor


@dataclass(frozen=True, slots=True)
class SegmentStats:
    """What the engine tells a policy about a finished segment."""

    service_s: float  # engine time from admission to the segment's last token
    prefill_tokens: int  # tokens actually prefilled (cache misses and recompute included)
    output_tokens: int


@dataclass(frozen=True)
class PolicyContext:
    predictor: Predictor
    profile: DeploymentProfile


class Policy:
    name = "base"
    packs = False  # vLLM stops at the first waiting request that does not fit; packing policies skip it
    evicts_for_admission = False  # may evict idle (preserved) KV to admit ready work
    # The rank is the wait key alone (see `wait_key`): it never reads the clock, so a waiting job's rank changes
    # only when its wait key does.
    key_is_static = False
    # Which of the predictor's estimates (`Predictor.versions`) `wait_key` and `growth_tokens` read: an engine keeps
    # each waiting job's values until one of those moves (every one, unless a policy says fewer). A value priced at
    # `Predictor.priced_decode_s` reads "speed"; one that reads the live speed, which drifts between versions,
    # declares every estimate: it depends on when it is computed, and an engine that computes it at every version
    # and never later than a pass's start (one group, `order_groups`) keeps the simulator's results as measured.
    wait_key_reads: frozenset[str] = ESTIMATES
    growth_reads: frozenset[str] = ESTIMATES

    def __init__(self, ctx: PolicyContext):
        self.pred = ctx.predictor
        self.profile = ctx.profile

    # ------------------------------------------------------------------------------ ordering
    def wait_key(self, job: Job):
        """The part of a ready job's rank that stays fixed while it waits: it reads only the job's own state and
        the predictor (never the clock, never other jobs), so it changes only when the job's KV does or the
        predictor's version moves. An engine computes it once per wait instead of at every admission pass, where
        an overloaded queue of hundreds of jobs is re-ranked at every segment end."""
        raise NotImplementedError

    def rank(self, job: Job, now: float, wait_key: Callable[[Job], object]):
        """Sort key of a ready job, smaller first, from the clock and `wait_key(job)` (asked only where the rank
        needs it). Static policies: the wait key."""
        return wait_key(job)

    def key(self, job: Job, now: float):
        return self.rank(job, now, self.wait_key)

    def order(self, ready: list[Job], now: float, wait_key: Callable[[Job], object] | None = None) -> list[Job]:
        """`ready` in admission order (a stable sort: ties keep `ready`'s order). `wait_key`: the caller's memo of
        `self.wait_key` (an engine keeps it for as long as each job waits)."""
        wk = wait_key or self.wait_key
        return sorted(ready, key=lambda j: self.rank(j, now, wk))

    def order_groups(self, ready: list[Job], now: float, wait_key: Callable[[Job], object] | None = None
                     ) -> Iterable[list[Job]]:
        """`ready` split into groups, each ranking wholly before the next, so that `order` of each group, one
        after another, is `order(ready)`; `order` of a part of a group must keep the order the whole group has
        (as a stable sort does when a group keeps `ready`'s relative order). An engine takes the next group, and
        sorts it, only when its admission pass reaches it (see runtime.agents.queue_order): a policy whose rank
        starts with something cheap to read saves ranking what a pass does not reach, and one may yield its
        groups lazily, working each out only when it is asked for. Default: one group."""
        return [ready]

    # ------------------------------------------------------------------------------ lifecycle hooks
    def on_ready(self, job: Job, now: float) -> None:
        """A segment of `job` became ready (arrival, tool return or preemption)."""

    def on_admit(self, job: Job, now: float, waited_s: float) -> None:
        """`job`'s segment entered the batch after waiting `waited_s` in the queue."""

    def on_segment_done(self, job: Job, now: float, stats: SegmentStats) -> None:
        """`job`'s current segment finished (called before `job.seg` advances)."""

    def on_tool_return(self, job: Job, now: float, duration_s: float) -> None:
        """A tool call of `job` returned after `duration_s` (the only time a policy learns a duration)."""

    def growth_tokens(self, job: Job) -> int:
        """KV the segment is expected to add while it runs, reserved at admission (0: admit on current size,
        as vLLM does, and rely on preemption when decodes outgrow memory)."""
        return 0

    # ------------------------------------------------------------------------------ KV
    def on_tool_call(self, job: Job, now: float, view: MemoryView) -> KVDecision:
        return KVDecision(KVAction.DISCARD)

    def on_pin_expired(self, job: Job, now: float, view: MemoryView) -> KVAction:
        """A PRESERVE decision's TTL ran out while the tool still runs: what becomes of the KV (SWAP falls back to
        DISCARD where the host tier has no room)."""
        return KVAction.DISCARD

    def evict_candidates(self, idle: list[Job], now: float, view: MemoryView, forced: bool
                         ) -> list[tuple[Job, KVAction]]:
        """Idle KV to give up, most worth giving up first. `forced`: a running segment needs the memory."""
        if not forced:
            return []
        ranked = sorted(idle, key=lambda j: -self.remaining_api_s(j, now))
        return [(j, KVAction.DISCARD) for j in ranked]

    def rank_by_waste(self, idle: list[Job], now: float, view: MemoryView, forced: bool,
                      waste: Callable[[Job, float, MemoryView], Waste]) -> list[tuple[Job, KVAction]]:
        """Preserved jobs ranked by how much more keeping their KV wastes than the best alternative.

        Unforced, only jobs whose least-waste option is not PRESERVE are offered; forced (a running segment needs
        the room), every preserved job is, each with the cheaper of swap and discard."""
        scored = []
        for j in idle:
            if j.kv is not KVState.PRESERVED:
                continue
            t_api = self.remaining_api_s(j, now)
            if t_api == 0.0 and not forced:
                continue  # keeping KV no call holds wastes nothing, and no option wastes less than nothing
            w = waste(j, t_api, view)
            swap_ok = self.swap_ok(j, view)
            action = w.best(swap_ok)
            if action is KVAction.PRESERVE:
                if not forced:
                    continue
                action = KVAction.SWAP if swap_ok and w.swap < w.discard else KVAction.DISCARD
            scored.append((w.preserve - min(w.discard, w.swap), j, action))
        scored.sort(key=lambda s: -s[0])
        return [(j, a) for _, j, a in scored]

    # ------------------------------------------------------------------------------ shared helpers
    def per_state(self, job: Job, name: str, fn: Callable[[Job], float]) -> float:
        """fn(job), cached until the job's segment or KV changes or the predictor's estimates move: queues are
        re-sorted at every admission pass, and most of their members have not changed since the last one."""
        key = (job.seg, job.kv, job.kv_tokens, job.seg_generated, self.pred.version)
        hit = job.policy_state.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = fn(job)
        job.policy_state[name] = (key, value)
        return value

    def remaining_api_s(self, job: Job, now: float) -> float:
        if job.kv is KVState.PRESERVED and job.phase is Phase.TOOL:
            cat = job.segments[job.seg - 1].api_category
            return self.pred.api_s(cat, now - job.tool_started_s)
        return 0.0

    def swap_ok(self, job: Job, view: MemoryView) -> bool:
        return view.cpu_free_blocks >= blocks_for(job.kv_tokens, view.block_size)

    def swap_s(self, job: Job, view: MemoryView) -> float:
        return view.link_backlog_s + self.profile.swap_s(job.kv_tokens)
