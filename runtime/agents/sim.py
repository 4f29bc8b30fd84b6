"""Discrete-event, iteration-level simulator of continuous-batching engines serving agent jobs.

Each `SimulatedEngine` reproduces what a vLLM engine does per iteration: running segments first (decode tokens and
chunks of unfinished prefills, under a token budget), then admission of ready segments in the policy's order
while sequence slots, token budget and KV blocks allow. KV lives in a `GpuBlockPool` whose freed blocks stay in
an LRU prefix cache, a `CpuBlockPool` for swapped jobs, and a serial GPU<->CPU link. All scheduling and KV
choices are delegated to the policy - the same objects the real engine calls.

Speed: stretches where every running segment is decoding and no event is due are advanced in one closed-form
"macro step" (step time is linear in KV tokens, which grow by the batch size per step), so simulated time is
cut into pieces only at events: arrivals, tool returns, transfers, segment ends and block shortages.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from runtime.agents.cluster import DEFER_TO_CHEAPER, GlobalQueue, NextStep, autellix_engine, engine_slowdown
from runtime.agents.costmodel import DeploymentProfile, prefill_pairs
from runtime.agents.job import Job, KVState, Phase
from runtime.agents.kv import CpuBlockPool, GpuBlockPool, KVAction, MemoryView, blocks_for
from runtime.agents.lifecycle import Lifecycle
from runtime.agents.policy import Policy, PolicyContext, SegmentStats, make_policy
from runtime.agents.predictor import Predictor
from runtime.agents.queue_order import Position, QueueOrder

PLACEMENTS = ("round_robin", "least_loaded", "global", "autellix")
AUTELLIX_SHORT_S = 2.0  # predicted segment compute below which Autellix treats a call as short

_ARRIVAL, _TOOL_RETURN, _SWAP_OUT_DONE, _SWAP_IN_DONE, _TTL = range(5)


@dataclass(slots=True, eq=False)
class _Running:
    job: Job
    prefill_left: int  # tokens of this segment's input still to prefill
    decode_left: int  # tokens still to generate
    admitted_s: float
    reserve_to: int = 0  # KV tokens the policy expects the segment to reach (admission reservation)
    prefilled: int = 0  # tokens prefilled for this segment (statistics)
    alive: bool = True  # False once finished or preempted


@dataclass
class EngineCounters:
    preserve: int = 0
    swap: int = 0
    discard: int = 0
    preemptions: int = 0
    prefill_tokens: int = 0
    recompute_tokens: int = 0
    cache_hit_tokens: int = 0
    decode_tokens: int = 0
    iterations: int = 0
    busy_s: float = 0.0
    idle_kv_token_s: float = 0.0  # integral of preserved-but-idle KV tokens over time
    moved_out: int = 0  # jobs whose KV another engine copied in from here
    moved_in_tokens: int = 0  # KV tokens copied in from other engines


class SimulatedEngine:
    def __init__(self, index: int, profile: DeploymentProfile, policy: Policy, predictor: Predictor,
                 on_job_done: Callable[[Job], None]):
        self.index = index
        self.profile = profile
        self.cost = profile.cost
        self.policy = policy
        self.pred = predictor
        self.life = Lifecycle(policy, predictor)
        self.on_job_done = on_job_done
        self.slowdown = engine_slowdown(profile.cost, predictor)
        self.bs = profile.block_size
        self.pool = GpuBlockPool(profile.gpu_blocks, profile.block_size)
        self.cpu = CpuBlockPool(profile.cpu_blocks)
        self.running: list[_Running] = []
        self.ready: list[Job] = []
        self.preserved: dict[str, Job] = {}  # idle jobs whose KV is resident (in a tool call or queued)
        self.swapping_in = 0
        self.events: list[tuple[float, int, int, Job, int]] = []
        self.now = 0.0
        self.link_free_s = 0.0
        self.counters = EngineCounters()
        self._seq = 0
        self._idle_tokens = 0
        # Incremental admission. Decoding only consumes memory, so after a pass that left segments waiting for
        # memory or a sequence slot, nothing that was waiting can fit until something frees resources (a segment
        # ends, KV is evicted or swapped out, a segment is preempted). Until then only newly ready segments are
        # tried (with the blocked head of the queue, so a non-packing policy keeps its order). This keeps
        # overloaded runs with long queues from re-sorting the whole queue at every event.
        self._blocked = False
        self._blocked_head: Job | None = None
        self._new_ready: list[Job] = []
        # Wait keys of waiting jobs (`Policy.wait_key`): computed once per wait (dropped at admission), dropped
        # when a waiting job's KV changes, all dropped when an estimate they read moves (`Policy.wait_key_reads`).
        # Where the policy's rank is the wait key alone (`Policy.key_is_static`), each is kept with the job's
        # enqueue number, which breaks ties as the ready list's order does, so the order is `Policy.order`'s.
        self._keys = _Memo(self._sort_key if policy.key_is_static else policy.wait_key)
        # Blocks each waiting job needs to be admitted with its expected growth (`_footprint`): dropped with its
        # wait key, all dropped when an estimate the policy's `growth_tokens` reads moves.
        self._footprints = _Memo(self._footprint)
        self._keys_version: tuple[int, ...] | None = None
        self._stale_keys: list[Job] | None = None  # jobs whose wait key this admission pass drops at its end
        self._footprints_version: tuple[int, ...] | None = None
        self._enqueued: dict[Job, int] = {}
        self._enqueue_count = 0
        # Cluster modes: where a job that becomes ready (arrival or tool return) goes instead of this engine's
        # queue, and the global queue this engine pulls from.
        self.route: Callable[[Job, float], None] | None = None
        self._incoming: set[Job] = set()  # pulled jobs whose KV is copied in from the engine that held it
        self.cluster: GlobalQueue | None = None

    # ------------------------------------------------------------------------------------------ events
    def push(self, t: float, kind: int, job: Job, tag: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, job, tag))

    def next_event_s(self) -> float:
        return self.events[0][0] if self.events else math.inf

    @property
    def load(self) -> int:
        return len(self.running) + len(self.ready) + self.swapping_in

    def _drain(self) -> None:
        while self.events and self.events[0][0] <= self.now:
            t, _, kind, job, tag = heapq.heappop(self.events)
            if kind == _ARRIVAL:  # a new job, or one Autellix routed here (already ready)
                self.life.moved(job, self.index)
                if job.phase is not Phase.READY:
                    self.life.ready(job, t)
                self._enqueue(job)
            elif kind == _TOOL_RETURN:
                self.life.tool_returned(job, t)
                if self.route is None:
                    self._enqueue(job)
                else:
                    self.route(job, t)
            elif kind == _SWAP_OUT_DONE:
                self._blocked = False
                self._forget(job)
                self.pool.free_job(job.job_id)
                self.life.kv_kept(job, KVState.SWAPPED, job.kv_tokens)
            elif kind == _SWAP_IN_DONE:
                self.swapping_in -= 1
                self.cpu.free_job(job.job_id)
                self._resume(job, t)
            elif kind == _TTL and job.phase is Phase.TOOL and job.kv is KVState.PRESERVED and tag == job.seg - 1:
                self._evict(job, self.policy.on_pin_expired(job, t, self.view()))  # this call's pin expired

    def _enqueue(self, job: Job) -> None:
        self.ready.append(job)
        self._new_ready.append(job)
        self._enqueued[job] = self._enqueue_count = self._enqueue_count + 1

    def _sort_key(self, job: Job) -> tuple:
        """A static policy's whole sort key of a waiting `job`: its wait key, then its enqueue number."""
        return self.policy.wait_key(job), self._enqueued[job]

    def _forget(self, job: Job) -> None:
        """Drop what is kept about a waiting `job` (its KV changed, or it no longer waits). During an admission
        pass its wait key is dropped only when the pass ends: a pass ranks its queue as it stood when the pass
        began, though it sorts parts of it later (`QueueOrder`), and evicting a waiting job's KV changes its key."""
        if self._stale_keys is None:
            self._keys.pop(job, None)
        else:
            self._stale_keys.append(job)
        self._footprints.pop(job, None)

    def _footprint(self, job: Job) -> int:
        """Blocks `job` must find free to be admitted without evicting: the rest of its context, one token and the
        output its policy reserves (`_admit`'s `need + extra`), kept for as long as it waits (see `_footprints`)."""
        tokens = job.resume_tokens + 1 + self.policy.growth_tokens(job)
        return blocks_for(tokens, self.bs) - self.pool.owned.get(job.job_id, 0)

    def _queue_order(self, cands: list[Job]) -> QueueOrder:
        """`cands` in the policy's order, sorted as far as the pass looks (see `_keys` and `QueueOrder`)."""
        keys_version = self.pred.versions_of(self.policy.wait_key_reads)
        if self._keys_version != keys_version:
            self._keys.clear()
            self._keys_version = keys_version
        if self.policy.key_is_static:
            return QueueOrder([cands], lambda jobs: sorted(jobs, key=self._keys.__getitem__))
        wk, now = self._keys.__getitem__, self.now
        return QueueOrder(self.policy.order_groups(cands, now, wk), lambda jobs: self.policy.order(jobs, now, wk))

    # ------------------------------------------------------------------------------------------ cluster
    def room(self) -> tuple[int, int]:
        blocks = self.pool.free - self._reserved_blocks()
        if self.policy.evicts_for_admission or not self.running:
            blocks += sum(self.pool.owned.get(j.job_id, 0) for j in self.preserved.values())
        blocks -= sum(blocks_for(j.resume_tokens + 1, self.bs) - self.pool.owned.get(j.job_id, 0) for j in self.ready)
        seqs = self.profile.max_num_seqs - len(self.running) - self.swapping_in - len(self.ready)
        return blocks, seqs

    def backlog_s(self) -> float:
        running = sum(r.prefill_left * self.cost.token_s + r.decode_left * self.pred.decode_s_per_token * self.slowdown
                      for r in self.running)
        return running + self.slowdown * sum(self.pred.compute_s(j) for j in self.ready)

    def held_blocks(self, job: Job) -> int:
        return self.pool.owned.get(job.job_id, 0)

    def next_step(self) -> NextStep:
        c = self.cost
        return NextStep(c.step_s(0, len(self.running), sum(r.job.kv_tokens for r in self.running), 0.0),
                        c.token_s, c.kv_read_s, len(self.running))

    def receive_s(self, tokens: int) -> float | None:
        return self.profile.receive_s(tokens)

    def hand_over(self, job: Job) -> None:
        """`job` moves to another engine that copies its KV in: free what it holds here, keep its tokens known."""
        if job.kv is KVState.PRESERVED:
            self._set_idle(job, False)
            self._blocked = False
            self._forget(job)
            self.pool.free_job(job.job_id)
        elif job.kv is KVState.SWAPPED:
            self.cpu.free_job(job.job_id)
        self.counters.moved_out += 1

    def release(self, job: Job) -> None:
        """`job` moves to another engine: give up the KV it holds here (it will be recomputed there)."""
        if job.kv is KVState.PRESERVED:
            self._evict(job, KVAction.DISCARD)
        elif job.kv is KVState.SWAPPED:
            self.cpu.free_job(job.job_id)
            self.life.kv_kept(job, KVState.DISCARDED, 0)

    def _pull(self) -> None:
        for job in self.cluster.pull(self):
            old = self.life.moved(job, self.index)
            if old is not None and self.receive_s(job.kv_tokens) is not None:
                self.cluster.engines[old].hand_over(job)
                self._incoming.add(job)
            elif old is not None:
                self.cluster.engines[old].release(job)
            self._enqueue(job)

    # ------------------------------------------------------------------------------------------ memory
    def view(self) -> MemoryView:
        batch = sum(r.job.kv_tokens for r in self.running)
        return MemoryView(self.pool.num_blocks, self.pool.used, self.cpu.free, self.bs, batch,
                          max(self.link_free_s - self.now, 0.0))

    def _set_idle(self, job: Job, idle: bool) -> None:
        if idle:
            self.preserved[job.job_id] = job
            self._idle_tokens += job.kv_tokens
        elif self.preserved.pop(job.job_id, None) is not None:
            self._idle_tokens -= job.kv_tokens

    def _evict(self, job: Job, action: KVAction) -> None:
        """Give up a preserved job's resident KV (a later decision than the one taken at its tool call)."""
        self._set_idle(job, False)
        self.counters.preserve -= 1
        self._blocked = False
        self._forget(job)
        self._apply_kv(job, action)

    def _apply_kv(self, job: Job, action: KVAction, ttl_s: float | None = None) -> None:
        if action is KVAction.SWAP and not self.cpu.allocate(job.job_id, blocks_for(job.kv_tokens, self.bs)):
            action = KVAction.DISCARD
        if action is KVAction.PRESERVE:
            self.counters.preserve += 1
            self.life.kv_kept(job, KVState.PRESERVED, job.kv_tokens)
            self._set_idle(job, True)
            if ttl_s is not None:  # tagged with the segment that called the tool: the pin of this call only
                self.push(self.now + ttl_s, _TTL, job, job.seg - 1)
        elif action is KVAction.SWAP:
            self.counters.swap += 1
            self.life.kv_kept(job, KVState.SWAPPING_OUT, job.kv_tokens)
            self.push(self._transfer(job.kv_tokens), _SWAP_OUT_DONE, job)
        else:
            self.counters.discard += 1
            self.pool.release_to_cache(job.job_id, job.kv_tokens)
            self.life.kv_kept(job, KVState.DISCARDED, 0)

    def _transfer(self, tokens: int, seconds: float | None = None) -> float:
        """Queue a KV transfer of `tokens` (taking `seconds`, else a host copy's time) on the engine's one serial
        PCIe link, which host copies and network copies share; returns when it completes."""
        self.link_free_s = max(self.now, self.link_free_s) + (self.profile.swap_s(tokens) if seconds is None
                                                              else seconds)
        return self.link_free_s

    def _victims(self, forced: bool) -> Iterator[tuple[Job, KVAction]]:
        """Idle KV in the policy's eviction order, ranked once and consumed lazily."""
        if not self.preserved:
            return iter(())
        return iter(self.policy.evict_candidates(list(self.preserved.values()), self.now, self.view(), forced))

    def _make_room(self, need: int, victims: Iterator[tuple[Job, KVAction]], exclude: Job | None = None) -> bool:
        """Evict idle KV from `victims` until `need` blocks are free."""
        while self.pool.free < need:
            nxt = next(victims, None)
            if nxt is None:
                return False
            job, action = nxt
            if job is not exclude and job.kv is KVState.PRESERVED and job.job_id in self.preserved:
                self._evict(job, action)
        return True

    def _preempt_one(self, protect: _Running | None) -> bool:
        """vLLM's last resort: stop the lowest-priority running segment and recompute it later."""
        cands = [r for r in self.running if r is not protect] or list(self.running)
        if not cands:
            return False
        order = self.policy.order([r.job for r in cands], self.now)
        victim_job = order[-1]
        victim = next(r for r in cands if r.job is victim_job)
        self.running.remove(victim)
        victim.alive = False
        job = victim.job
        self.counters.preemptions += 1
        self._blocked = False
        self.pool.release_to_cache(job.job_id, job.kv_tokens)
        self.life.preempted(job, self.now, self.now - victim.admitted_s)
        self._enqueue(job)
        return True

    def _grow(self, r: _Running, tokens: int) -> bool:
        """Make sure `r` owns blocks for `tokens` more tokens; may evict idle KV or preempt others."""
        need = blocks_for(r.job.kv_tokens + tokens, self.bs) - self.pool.owned.get(r.job.job_id, 0)
        if need <= 0:
            return True
        if need > self.pool.free:
            victims = self._victims(forced=True)
            while not self._make_room(need, victims):
                if not self._preempt_one(protect=r) or not r.alive:
                    return False
        return self.pool.allocate(r.job.job_id, need)

    # ------------------------------------------------------------------------------------------ admission
    def _admit(self, budget: int) -> int:
        """Admit ready segments in policy order; returns the token budget left."""
        max_seqs = self.profile.max_num_seqs
        if not self.ready or budget <= 0 or len(self.running) + self.swapping_in >= max_seqs:
            return budget
        if self._blocked:
            if not self._new_ready:
                return budget
            cands = list(self._new_ready)
            head = self._blocked_head
            if head is not None and head.phase is Phase.READY and head not in cands:
                cands.append(head)
        else:
            cands = self.ready
        self._new_ready = []
        admitted: set[int] = set()
        victims: Iterator[tuple[Job, KVAction]] | None = None
        exhausted = False  # no idle KV left to evict in this pass
        may_evict = self.policy.evicts_for_admission or not self.running
        reserved = self._reserved_blocks()
        blocked_head = None
        bs, owned = self.bs, self.pool.owned
        order = self._queue_order(cands)
        self._stale_keys = []
        tail = False  # `order` narrowed to the packing tail (see `_fits_in`)
        last = None
        for job in order:
            if tail and self._tail_ends(job, order, last, reserved):
                break  # a segment the tail left out came first, and with no free block it would end the pass
            last = order.position
            if budget <= 0 or len(self.running) + self.swapping_in >= max_seqs:
                blocked_head = blocked_head or job
                break
            if job.kv is KVState.SWAPPING_OUT:
                continue  # its blocks are still in flight; it becomes admissible when the swap-out lands
            total = blocks_for(job.resume_tokens + 1, bs)
            need = total - owned.get(job.job_id, 0)
            fits = not (need + reserved > self.pool.free and (exhausted or not may_evict))
            if fits:
                growth = self.policy.growth_tokens(job)
                extra = blocks_for(job.resume_tokens + 1 + growth, bs) - total
                if need + extra + reserved > self.pool.free:
                    # Idle KV is given up for new work only by policies that manage it that way - or when
                    # nothing runs at all, since waiting then could only deadlock.
                    if may_evict and victims is None:
                        victims = self._victims(forced=not self.running)
                    if not (may_evict and self._make_room(need + extra + reserved, victims, exclude=job)):
                        exhausted, fits = True, False
            if not fits:
                blocked_head = blocked_head or job
                if not (self.policy.packs and self.pool.free > reserved):
                    break
                if not tail:  # a smaller segment further down may still fit: visit only those from here on
                    order.narrow(self._fits_in(self.pool.free - reserved))
                    tail = True
                continue
            reserved += extra
            admitted.add(id(job))
            self.life.admit(job, self.now)
            budget -= min(self._place(job, need), budget)
            if tail:  # less room is left: segments that fitted the tail before may no longer
                order.narrow(self._fits_in(self.pool.free - reserved))
        for job in self._stale_keys:
            self._keys.pop(job, None)
        self._stale_keys = None
        if admitted:
            self.ready = [j for j in self.ready if id(j) not in admitted]
        if budget > 0 and self.ready:
            self._blocked, self._blocked_head = True, blocked_head
        else:
            self._blocked, self._blocked_head = False, None
        return budget

    def _fits_in(self, room: int) -> Callable[[list[Job]], list[Job]]:
        """The rest of a packing pass once no idle KV can be given up: only segments whose footprint fits in
        `room` blocks can still be admitted (free blocks only shrink and reservations only grow from here), so
        the pass visits those instead of every waiting segment; in an overloaded queue of hundreds that was most
        of the simulator's time."""
        version = self.pred.versions_of(self.policy.growth_reads)
        if self._footprints_version != version:
            self._footprints.clear()
            self._footprints_version = version
        footprint = self._footprints.__getitem__

        def fitting(jobs: list[Job]) -> list[Job]:
            fps = list(map(footprint, jobs))
            if min(fps, default=room + 1) > room:  # the common case in an overloaded queue, decided in C
                return []
            return [j for j, fp in zip(jobs, fps, strict=True) if fp <= room and j.kv is not KVState.SWAPPING_OUT]
        return fitting

    def _tail_ends(self, job: Job, order: QueueOrder, last: Position, reserved: int) -> bool:
        """Whether the packing tail's pass ends before `job`. With no block free beyond the reservations, a full
        pass would end at the first segment after `last` that it checks (every one needs a block, so none fits),
        unless that segment needs none: `job` ends it if it needs a block, else if the tail skipped a segment
        between the two."""
        if self.pool.free > reserved:
            return False
        return self._footprints[job] > 0 or order.waiting_between(last, order.position)

    def _place(self, job: Job, need: int) -> int:
        """Bring an admitted job's KV into place and start it; returns the tokens it must prefill."""
        self._forget(job)
        del self._enqueued[job]
        if job.kv is KVState.PRESERVED:
            self._set_idle(job, False)
        moved = job in self._incoming  # its KV comes over the network from the engine that held it
        if moved or job.kv is KVState.SWAPPED:  # ... or from host memory
            self._incoming.discard(job)
            self.pool.allocate(job.job_id, need)
            self.life.kv_kept(job, KVState.SWAPPING_IN, job.kv_tokens)
            self.swapping_in += 1
            self.counters.moved_in_tokens += job.kv_tokens if moved else 0
            seconds = self.profile.receive_s(job.kv_tokens) if moved else None
            self.push(self._transfer(job.kv_tokens, seconds), _SWAP_IN_DONE, job)
            return 0
        if job.kv in (KVState.NONE, KVState.DISCARDED):
            hit_blocks = self.pool.take_cached(job.job_id)
            self.counters.cache_hit_tokens += min(hit_blocks * self.bs, job.resume_tokens - 1)
            need -= hit_blocks
            self.life.kv_kept(job, KVState.ACTIVE, hit_blocks * self.bs)
        self.pool.allocate(job.job_id, max(need, 0))
        return self._resume(job, self.now)

    def _resume(self, job: Job, t: float) -> int:
        """Start a job on the KV it has in place; returns the tokens it must prefill. Like vLLM, which finds
        kept KV by its block hashes, only full blocks are reused, and never the whole input (the last token is
        computed to sample from): the partial tail block is computed again."""
        kept = min(job.kv_tokens // self.bs * self.bs, job.resume_tokens - 1)
        self.life.kv_kept(job, KVState.ACTIVE, kept)
        prefill = job.resume_tokens - kept
        self._start(job, t, prefill)
        return prefill

    def _reserved_blocks(self) -> int:
        """Blocks running segments are expected to claim beyond what they own (policies that reserve)."""
        total = 0
        for r in self.running:
            if r.reserve_to:
                total += max(blocks_for(r.reserve_to, self.bs) - self.pool.owned.get(r.job.job_id, 0), 0)
        return total

    def _start(self, job: Job, t: float, prefill: int) -> None:
        job.preempted = False
        growth = self.policy.growth_tokens(job)
        self.running.append(_Running(job, prefill, job.current.output_tokens - job.seg_generated, t,
                                     reserve_to=job.resume_tokens + 1 + growth if growth else 0))

    # ------------------------------------------------------------------------------------------ iterations
    def step(self, horizon: float) -> None:
        """Run one iteration (or one macro step of pure decode); idle engines jump to the next event."""
        self._drain()
        budget = self.profile.max_batched_tokens
        for r in [r for r in self.running if r.prefill_left == 0]:
            if r.alive:
                self._grow(r, 1)
        decoding = [r for r in self.running if r.prefill_left == 0]
        budget -= len(decoding)
        n_old = len(self.running)
        chunks: list[tuple[_Running, int]] = []
        for r in self.running:
            if r.prefill_left > 0 and budget > 0:
                n = min(r.prefill_left, budget)
                chunks.append((r, n))
                budget -= n
        if self.cluster is not None:
            self._pull()
        self._admit(budget)
        for r in self.running[n_old:]:  # newly admitted segments take what is left of the budget
            if r.prefill_left > 0 and budget > 0:
                n = min(r.prefill_left, budget)
                chunks.append((r, n))
                budget -= n
        if not decoding and not chunks:
            nxt = min(self.next_event_s(), horizon)
            self._advance(nxt - self.now if math.isfinite(nxt) else 0.0)
            if not math.isfinite(nxt):
                self.now = math.inf
            return
        if not chunks:
            self._decode_macro(decoding, horizon)
            return
        kv_read = sum(r.job.kv_tokens for r in decoding)
        prefill = sum(n for _, n in chunks)
        pairs = sum(prefill_pairs(r.job.kv_tokens, n) for r, n in chunks)
        dt = self.cost.step_s(prefill, len(decoding), kv_read, pairs)
        self._advance(dt, busy=True)
        self.counters.iterations += 1
        self.counters.prefill_tokens += prefill
        for r, n in chunks:
            job = r.job
            self.counters.recompute_tokens += max(min(job.peak_kv_tokens, job.kv_tokens + n) - job.kv_tokens, 0)
            r.prefill_left -= n
            r.prefilled += n
            job.kv_tokens += n
            job.peak_kv_tokens = max(job.peak_kv_tokens, job.kv_tokens)
            if r.prefill_left == 0:  # the step that completes a prefill samples the first token
                decoding.append(r)
        self._emit_tokens(decoding, 1)

    def _decode_macro(self, decoding: list[_Running], horizon: float) -> None:
        b = len(decoding)
        k = min(r.decode_left for r in decoding)
        free = self.pool.free
        slack = min(self.pool.owned.get(r.job.job_id, 0) * self.bs - r.job.kv_tokens for r in decoding)
        k = min(k, max(1, slack + (free // b) * self.bs))
        kv0 = sum(r.job.kv_tokens for r in decoding)
        a = self.cost.base_s + self.cost.token_s * b + self.cost.kv_read_s * kv0
        c = self.cost.kv_read_s * b  # step i costs a + c*i
        room = min(self.next_event_s(), horizon) - self.now
        if k > 1 and math.isfinite(room):
            k = min(k, max(1, _steps_within(a, c, room)))
        if k > 1:  # k was bounded so that these allocations succeed without evicting anything
            for r in decoding:
                self._grow(r, k)
        dt = k * a + c * k * (k - 1) / 2.0
        self._advance(dt, busy=True)
        self.counters.iterations += k
        self.pred.observe_decode_step(dt / k)
        self._emit_tokens(decoding, k)

    def _emit_tokens(self, decoding: list[_Running], k: int) -> None:
        done = []
        for r in decoding:
            if not r.alive:
                continue
            r.decode_left -= k
            r.job.seg_generated += k
            r.job.kv_tokens += k
            r.job.peak_kv_tokens = max(r.job.peak_kv_tokens, r.job.kv_tokens)
            self.counters.decode_tokens += k
            if r.decode_left <= 0:
                done.append(r)
        if done:
            for r in done:
                r.alive = False
            self.running = [r for r in self.running if r.alive]
            for r in done:
                self._finish_segment(r)

    def _finish_segment(self, r: _Running) -> None:
        self._blocked = False
        job = r.job
        seg = job.current
        stats = SegmentStats(self.now - r.admitted_s, r.prefilled, seg.output_tokens)
        decision = self.life.segment_done(job, self.now, stats, self.view())
        if decision is None:  # the job is done
            self.pool.release_to_cache(job.job_id, job.kv_tokens)
            self.life.kv_kept(job, KVState.NONE, 0)
            self.on_job_done(job)
            return
        self._apply_kv(job, decision.action, decision.ttl_s)
        self.push(self.now + seg.api_time_s, _TOOL_RETURN, job)

    def _advance(self, dt: float, busy: bool = False) -> None:
        if dt <= 0:
            return
        self.counters.idle_kv_token_s += self._idle_tokens * dt
        if busy:
            self.counters.busy_s += dt
        self.now += dt


class _Memo(dict):
    """A dict that computes a missing value with `compute(key)` and keeps it: a hit is a plain dict lookup, with no
    Python call, which matters where a queue of hundreds is ranked at every admission pass."""

    def __init__(self, compute: Callable):
        super().__init__()
        self.compute = compute

    def __missing__(self, key):
        value = self[key] = self.compute(key)
        return value


def _steps_within(a: float, c: float, room: float) -> int:
    """Largest k with k*a + c*k*(k-1)/2 <= room (at least 0)."""
    if c <= 0:
        return int(room // a) if a > 0 else 1 << 30
    # c/2 k^2 + (a - c/2) k - room <= 0
    bq = a - c / 2.0
    k = (-bq + math.sqrt(bq * bq + 2.0 * c * room)) / c
    return max(int(math.floor(k + 1e-9)), 0)


# ---------------------------------------------------------------------------------------------- cluster

@dataclass
class SimResult:
    policy: str
    jobs: list[Job]
    engines: list[EngineCounters]
    makespan_s: float
    wall_s: float
    gpu_kv_tokens: int


def validate_fits(jobs: list[Job], profile: DeploymentProfile) -> None:
    for job in jobs:
        total = sum(s.prompt_tokens + s.output_tokens for s in job.segments)
        if total > profile.max_model_len:
            raise ValueError(f"job '{job.job_id}': context reaches {total} tokens, over max_model_len "
                             f"{profile.max_model_len} of '{profile.name}'")
        if blocks_for(total + 1, profile.block_size) > profile.gpu_blocks:
            raise ValueError(f"job '{job.job_id}': context of {total} tokens exceeds the engine's KV capacity "
                             f"({profile.gpu_kv_tokens} tokens)")


def simulate(jobs: list[Job], profile: DeploymentProfile, policy: str, *, engines: int = 1,
             placement: str = "round_robin", output_estimator: str = "oracle", policy_config: dict | None = None,
             on_progress: Callable[[int], None] | None = None,
             on_step: Callable[[SimulatedEngine], None] | None = None,
             fleet: Sequence[DeploymentProfile] | None = None) -> SimResult:
    """Run `jobs` (fresh `Job` objects, see `trace.jobs_from_table`) to completion under `policy`.

    `policy_config` overrides fields of the policy's config dataclass (see `policy.make_config`).
    `on_progress(n)` is called as jobs finish; `on_step(engine)` after every engine step (invariant checks,
    step logs). `fleet`: one profile per engine (engines of different speed or KV room; `engines` must match);
    the predictor and the policies plan in `profile`'s time, each engine steps at its own."""
    if engines < 1:
        raise ValueError(f"engines must be >= 1, got {engines}")
    fleet = list(fleet) if fleet is not None else [profile] * engines
    if len(fleet) != engines:
        raise ValueError(f"fleet names {len(fleet)} profiles for {engines} engines")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement '{placement}'; choose one of {PLACEMENTS}")
    if not jobs:
        raise ValueError("no jobs to simulate")
    if any(j.phase is not Phase.PENDING for j in jobs):
        raise ValueError("jobs were already simulated; build fresh ones with jobs_from_table")
    for p in {p.name: p for p in fleet}.values():
        validate_fits(jobs, p)
    wall0 = time.perf_counter()
    predictor = Predictor(profile.cost, output_estimator=output_estimator, max_len=profile.max_model_len)
    ctx = PolicyContext(predictor, profile)
    remaining = [len(jobs)]

    def done(job: Job) -> None:
        remaining[0] -= 1
        if on_progress is not None:
            on_progress(1)

    sims = [SimulatedEngine(i, fleet[i], make_policy(policy, ctx, policy_config), predictor, done)
            for i in range(engines)]
    queue = None
    if placement == "global":
        queue = GlobalQueue(make_policy(policy, ctx, policy_config), predictor, profile.block_size, sims,
                            defer_to_cheaper=DEFER_TO_CHEAPER)

        def route(job: Job, t: float) -> None:
            queue.submit(job)
            for e in sims:
                if math.isinf(e.now):
                    e.now = t  # an idle engine wakes up to pull

        for e in sims:
            e.route, e.cluster = route, queue
    elif placement == "autellix":
        def route(job: Job, t: float) -> None:
            target = autellix_engine(job, sims, predictor, AUTELLIX_SHORT_S)
            old = target.life.moved(job, target.index)
            if old is not None:
                sims[old].release(job)
            if math.isinf(target.now):
                target.now = t
            target.push(t, _ARRIVAL, job)  # becomes ready there at t, as an arrival does

        for e in sims:
            e.route = route
    pending = sorted(jobs, key=lambda j: (j.arrival_s, j.job_id))
    nxt = 0
    rr = 0
    while remaining[0] > 0:
        ta = pending[nxt].arrival_s if nxt < len(pending) else math.inf
        eng = min(sims, key=lambda e: e.now)
        if ta <= eng.now or (math.isinf(eng.now) and nxt < len(pending)):
            job = pending[nxt]
            nxt += 1
            if placement in ("global", "autellix"):
                sims[0].life.ready(job, ta)
                sims[0].route(job, ta)
                continue
            if placement == "round_robin":
                target = sims[rr % engines]
                rr += 1
            else:
                target = min(sims, key=lambda e: (e.load, e.index))
            if math.isinf(target.now):
                target.now = ta
            target.push(ta, _ARRIVAL, job)
            continue
        if math.isinf(eng.now):
            raise RuntimeError(f"simulation stalled with {remaining[0]} jobs unfinished")
        horizon = ta
        if placement in ("global", "autellix"):  # an engine must not idle past the next event anywhere: it may
            horizon = min([ta] + [t for e in sims if (t := e.next_event_s()) > eng.now])  # make work for it
        eng.step(horizon)
        if on_step is not None:
            on_step(eng)
    makespan = max(j.finish_s for j in jobs) - min(j.arrival_s for j in jobs)
    return SimResult(policy, jobs, [e.counters for e in sims], makespan, time.perf_counter() - wall0,
                     sum(p.gpu_kv_tokens for p in fleet))
