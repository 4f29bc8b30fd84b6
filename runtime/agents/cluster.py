"""Cluster-wide placement of agent segments over several engines.

Three arrangements, all driving the same per-engine policy objects:
- `GlobalQueue` (placement "global"): one ready queue for the whole cluster, ordered by the policy (Astraea's
  Stateful-MLFQ + HRRN over every ready segment), pulled by an engine only while it has room for the segment
  (admission control: queues stay in one place, where the global order decides). A resuming job stays with the
  engine that holds its KV unless recomputing it elsewhere costs less than that engine's predicted backlog.
- `autellix_engine` (placement "autellix"): Autellix's load balancing, decided when a segment becomes ready:
  short segments go to the least-loaded engine, long ones stay where their KV is.
- round robin / least loaded per job (placement "round_robin" / "least_loaded", in `sim.simulate`): a job stays on
  one engine for its whole life and each engine schedules alone.

The engine side is described by `PlacementTarget`, a protocol the simulator's engines implement and the real
cluster's dispatcher (`runtime.serving.dispatch`) builds from engine reports, so this module holds no engine
internals and the simulator and the GlobalScheduler actor run the same placement code.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from runtime.agents.costmodel import StepCost
from runtime.agents.job import HELD, Job, KVState
from runtime.agents.kv import blocks_for
from runtime.agents.policy import Policy
from runtime.agents.predictor import Predictor

# Where an engine pulls a segment that has no home, it leaves it to another engine that takes it at a join cost
# (`NextStep.join_cost_s`) this much lower. A small margin: estimates of nearly equal engines differ by a few
# sequences' KV, which is no reason to hold a segment back. On swe, 8 mixed engines, 3 seeds: 0.900x the best
# per-engine arrangement with 0, 0.898x with 0.05, 0.902x with 0.1.
DEFER_TO_CHEAPER = 0.05


class PlacementTarget(Protocol):
    index: int
    now: float
    slowdown: float  # `engine_slowdown` of its hardware: backlogs and moves are priced in the engine's own seconds

    def room(self) -> tuple[int, int]:
        """(KV blocks, sequence slots) the engine could still give to newly dispatched segments."""

    def backlog_s(self) -> float:
        """Predicted seconds of work the engine has running and queued, in its own time (times its slowdown)."""

    def held_blocks(self, job: Job) -> int:
        """Blocks of `job`'s KV this engine holds on its GPU tier."""

    def receive_s(self, tokens: int) -> float | None:
        """Seconds to copy `tokens` of a job's KV in from the engine that holds it; None: it cannot (recompute)."""

    def next_step(self) -> NextStep:
        """This engine's next decode step as it stands (used where the queue defers to engines a segment costs
        less on)."""


def engine_slowdown(cost: StepCost, predictor: Predictor) -> float:
    """How many times longer than the cluster's predictor says a segment takes on an engine of step cost `cost`.

    The cluster shares one predictor, which estimates in its own profile's time; placement that compares engines
    of different hardware (an H100 beside an A100) must compare their backlogs in each engine's own seconds, or it
    queues work behind a slow engine it believes is as fast. 1.0 in a fleet of one kind."""
    ref = (predictor.ref_batch, predictor.ref_context)
    return cost.decode_s_per_token(*ref) / predictor.cost.decode_s_per_token(*ref)


@dataclass(frozen=True)
class NextStep:
    """An engine's next decode step, and what one more sequence would add to it. The addition is linear in that
    sequence's context (a decode step reads every sequence's KV once), so the queue takes each engine's figures
    once per pull and prices every waiting segment from them, instead of asking each engine again per segment."""

    now_s: float  # the step as it stands
    per_seq_s: float  # what one more sequence adds, before its context
    per_token_s: float  # and per token of its context
    decoding: int  # sequences in the step

    def join_cost_s(self, tokens: int) -> float:
        """Per decode step, what one more sequence of `tokens` of context costs all of the engine's sequences
        together: its own step time, plus the time the step grows by for each sequence beside it, counted twice:
        in steady state as many sequences join during its stay as run beside it when it joins. Its own step time
        alone (the next step's speed) left the sharing out: on a mixed fleet it filled the fast engines until their
        steps were as slow as the slow ones' (bench.jct_cluster --fleet mixed, swe, 8 engines: 0.911x the best
        per-engine arrangement with it, 0.898x with this)."""
        growth = self.per_seq_s + self.per_token_s * tokens
        return self.now_s + growth + 2 * self.decoding * growth


class GlobalQueue:
    """The cluster's ready segments in the policy's order.

    `refresh_s` = 0 (the simulator) orders every visible job at every pull. A real scheduler with thousands of
    ready segments cannot afford that per dispatch (~20 ms at 10,000 with Astraea), so with `refresh_s` > 0 one
    full order is reused for that long: jobs that become ready meanwhile are inserted at their place by the
    policy's key at that moment, and the whole queue is re-ordered (response ratios grow with waiting, MLFQ aging
    applies) once the order is older than `refresh_s`.

    `defer_to_cheaper` (a fraction; None: never): an engine leaves a segment that has no home with it to another
    engine that has room for it and where the segment's join cost (`NextStep.join_cost_s`) is that fraction lower.
    Engines that pull on their own clocks (the simulator's) otherwise give a segment to whichever looks first; on a
    fleet of mixed hardware that fills the slow engines as much as the fast ones, and a batched engine runs every
    job in it at its own step time (bench.jct_cluster --fleet mixed). Whether such an engine exists is asked of
    `elsewhere(engine)` (default: every other engine, each asked for its next step at every pull); a caller whose
    engines' steps change only when it says so passes a `JoinCostIndex`'s `seen_from`, which asks only the few
    engines that could be cheaper."""

    def __init__(self, policy: Policy, predictor: Predictor, block_size: int, engines: list[PlacementTarget],
                 refresh_s: float = 0.0, defer_to_cheaper: float | None = None,
                 elsewhere: Callable[[PlacementTarget], CheaperElsewhere] | None = None):
        self.policy, self.pred, self.bs, self.engines = policy, predictor, block_size, engines
        self.refresh_s, self.defer_to_cheaper = refresh_s, defer_to_cheaper
        self.elsewhere = elsewhere or (lambda engine: _OtherEngines(engine, self.engines))
        self._ready: dict[int, Job] = {}  # id(job) -> job, in arrival order
        self._order: list[Job] = []  # the cached order (refresh_s > 0); may hold jobs no longer ready
        self._keys: list = []
        self._head = 0  # entries before it were taken (or cancelled) since the order was built
        self._order_at = float("-inf")
        self.decisions = 0  # segments dispatched

    def __len__(self) -> int:
        return len(self._ready)

    def jobs(self) -> list[Job]:
        return list(self._ready.values())

    def submit(self, job: Job) -> None:
        self._ready[id(job)] = job
        if self.refresh_s > 0 and self._order:
            key = self.policy.key(job, job.ready_since)
            at = bisect.bisect_right(self._keys, key, lo=self._head)
            self._keys.insert(at, key)
            self._order.insert(at, job)

    def invalidate(self) -> None:
        """Re-order everything at the next pull."""
        self._order_at = float("-inf")

    def remove(self, job: Job) -> None:
        self._ready.pop(id(job), None)

    def _ordered(self, now: float):
        if self.refresh_s <= 0:
            return self.policy.order([j for j in self._ready.values() if j.ready_since <= now], now)
        if now - self._order_at > self.refresh_s or not self._order:
            self._order = self.policy.order(list(self._ready.values()), now)
            self._keys = [self.policy.key(j, now) for j in self._order]
            self._order_at, self._head = now, 0
        while self._head < len(self._order) and id(self._order[self._head]) not in self._ready:
            self._head += 1
        return (j for j in self._order[self._head:] if id(j) in self._ready and j.ready_since <= now)

    def pull(self, engine: PlacementTarget, limit: int | None = None) -> list[Job]:
        """Segments `engine` should take now (at most `limit`), in the policy's order, while its room lasts. Jobs
        made ready at a time past the engine's clock are not visible to it yet."""
        blocks, seqs = engine.room()
        if limit is not None:
            seqs = min(seqs, limit)
        if not self._ready or seqs <= 0:
            return []
        taken: list[Job] = []
        elsewhere = None  # taken at the first segment that may be left to another engine
        for job in self._ordered(engine.now):
            if seqs <= 0:
                break
            home = job.engine if job.kv in HELD else None
            if home is not None and home != engine.index:
                if job.kv is KVState.SWAPPING_OUT:
                    continue
                if not self._moves(job, engine, self.engines[home]):
                    continue  # it ends sooner where its KV is
            need = blocks_for(job.resume_tokens + 1, self.bs)
            if home is None and self.defer_to_cheaper is not None:
                elsewhere = elsewhere or self.elsewhere(engine)
                if elsewhere.cheaper(job.resume_tokens, need, self.defer_to_cheaper):
                    continue
            if home == engine.index:
                need -= engine.held_blocks(job)
            if need > blocks:
                if self.policy.packs:
                    continue
                break
            blocks -= need
            seqs -= 1
            taken.append(job)
        for job in taken:
            del self._ready[id(job)]
        self.decisions += len(taken)
        if taken and self.refresh_s > 0 and len(self._order) - self._head > 2 * len(self._ready) + 64:
            self.invalidate()  # mostly stale entries: re-order at the next pull
        return taken

    def _moves(self, job: Job, engine: PlacementTarget, home: PlacementTarget) -> bool:
        """Whether `job`, whose KV `home` holds, is predicted to end sooner on `engine` (which has room now) than
        after `home`'s backlog: there it first gets its KV, copied in or recomputed, then runs at its speed.

        A job that stays rather than be recomputed on one engine stays rather than be recomputed on any no faster
        one while it and the estimates are as they were and its home's backlog has not grown: that engine could only
        lose more. Engines pull in turn, each scanning the queue, so a job waiting for its idle home was priced
        again on every engine before it: 47 pricings per granted segment at 1,000 engines when coalesced calls
        queue a few hundred segments at once (bench.control_plane, instrumented), `pull` 15% of the scheduler
        actor's samples."""
        bring = engine.receive_s(job.kv_tokens)
        backlog = home.backlog_s()
        recompute = bring is None
        if recompute:
            state = (job.engine, job.kv, job.kv_tokens, job.seg, job.context_tokens, job.segments, job.forecast,
                     self.pred.version, self.pred.decode_s_per_token)
            stays = job.policy_state.get("queue_stays")
            if stays is not None and stays[0] == state and engine.slowdown >= stays[1] and backlog <= stays[2]:
                return False
            bring = self.pred.recompute_s(job.kv_tokens) * engine.slowdown
        compute = self.pred.compute_s(job)
        moves = bring + compute * engine.slowdown < backlog + compute * home.slowdown
        if recompute and not moves:
            job.policy_state["queue_stays"] = (state, engine.slowdown, backlog)
        return moves


class CheaperElsewhere(Protocol):
    def cheaper(self, tokens: int, need: int, margin: float) -> bool:
        """Whether another engine with a free slot and `need` free blocks takes a segment of `tokens` at a join
        cost `margin` lower than the pulling engine's."""


class _OtherEngines:
    """The other engines as one engine's pull sees them. Nothing changes on them while one engine pulls, so each
    one's next step is taken once per pull, and its room, dearer to count, only once a segment would cost less
    there."""

    def __init__(self, engine: PlacementTarget, engines: list[PlacementTarget]):
        self.mine = engine.next_step()
        self.steps = [(e, e.next_step()) for e in engines if e is not engine]
        self._rooms: dict[int, tuple[int, int]] = {}

    def cheaper(self, tokens: int, need: int, margin: float) -> bool:
        limit = self.mine.join_cost_s(tokens) / (1 + margin)
        for e, step in self.steps:
            if step.join_cost_s(tokens) < limit:
                room = self._rooms.get(e.index)
                if room is None:
                    room = self._rooms[e.index] = e.room()
                if room[1] > 0 and room[0] >= need:
                    return True
        return False


class JoinCostIndex:
    """The engines' next steps, grouped so that the deferral's question is answered without asking every engine.

    Of two engines whose steps grow alike with one more sequence (the same per-sequence and per-token figures and
    as many sequences decoding), the one whose step is now shorter takes any segment at the lower join cost. So the
    engines are kept by those three figures, each group in the order of its step, and a question scans each group
    only while its join cost is under the limit: a few engines, not the fleet. For the dispatcher, whose 1,000
    engines each asked at every pull made each grant ~20x dearer (~1 ms; ~50 us without deferral). The answer is
    `_OtherEngines`'s; the owner calls `update` whenever an engine's step or liveness changes."""

    def __init__(self, engines: list[PlacementTarget]):
        self.engines = engines
        self._groups: dict[tuple[float, float, int], list[tuple[float, int, NextStep]]] = {}
        self._at: dict[int, tuple[tuple[float, float, int], tuple[float, int, NextStep]]] = {}

    def update(self, engine: PlacementTarget, alive: bool = True) -> None:
        old = self._at.pop(engine.index, None)
        if old is not None:
            group = self._groups[old[0]]
            del group[bisect.bisect_left(group, old[1])]
            if not group:
                del self._groups[old[0]]
        if alive:
            step = engine.next_step()
            key, entry = (step.per_seq_s, step.per_token_s, step.decoding), (step.now_s, engine.index, step)
            bisect.insort(self._groups.setdefault(key, []), entry)  # indices differ: steps are never compared
            self._at[engine.index] = key, entry

    def seen_from(self, engine: PlacementTarget) -> CheaperElsewhere:
        return _IndexedOtherEngines(self, engine)


class _IndexedOtherEngines:
    def __init__(self, index: JoinCostIndex, engine: PlacementTarget):
        self.index, self.me, self.mine = index, engine.index, engine.next_step()

    def cheaper(self, tokens: int, need: int, margin: float) -> bool:
        limit = self.mine.join_cost_s(tokens) / (1 + margin)
        for group in self.index._groups.values():
            for _, i, step in group:
                if step.join_cost_s(tokens) >= limit:
                    break
                if i != self.me:
                    blocks, seqs = self.index.engines[i].room()
                    if seqs > 0 and blocks >= need:
                        return True
        return False


def autellix_engine(job: Job, engines: list[PlacementTarget], predictor: Predictor, short_s: float) -> PlacementTarget:
    """Autellix's placement of a segment that became ready: short (predicted compute below `short_s`) to the
    least-loaded engine, long to the engine that ran the job before (its KV and prefix cache are there)."""
    if job.kv is KVState.SWAPPING_OUT:  # its blocks are still being copied out there: only that engine can resume it
        return engines[job.engine]
    least = min(engines, key=lambda e: (e.backlog_s(), e.index))
    if job.seg == 0 and job.seg_generated == 0:
        return least
    if predictor.compute_s(job) < short_s:
        return least
    return engines[job.engine]
