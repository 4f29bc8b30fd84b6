"""`GlobalScheduler`: the named, detached actor that owns the engines and the cluster's job table.

It wraps `runtime.serving.dispatch.Dispatcher` with what only an actor can do: create the engine actors, park each
caller until its segment is granted, and watch the engines (a second each: their KV state feeds the dispatcher,
a dead one stops getting work, a restarted one rejoins, idle sessions expire, and what each engine really runs is
reconciled with the grants; a fleet of more than WATCH_PER_S engines is asked in turns).

Back-pressure: a caller `acquire`s under a ticket it names and is answered at once (a grant, a refusal: QueueFull /
SessionBusy / NoEngine, or queued: it then `wait`s, parked until its segment is granted or `within_s` passes, and
asks again). `acquire` and `finish` take many callers' requests in one call (`runtime.serving.coalesce`): one Ray
call per segment and kind caps a scheduler far below what it can plan. Only queued and retried segments park, and
`acquire` refuses beyond `max_queue`, so at most `max_queue` + one retry per engine sequence slot calls are parked
at any time. The actor's concurrency limit is set above that sum by construction (`scheduler_concurrency`), which
leaves `finish`, `cancel` and the views room to run however many callers wait: a burst can be refused, never wedge
the scheduler.

Failure: Ray restarts the actor (`max_restarts`) and re-sends the calls that were in flight or arrive meanwhile
(`max_task_retries`), so callers see a delay, not an error. Every call is safe to repeat: a ticket is named by its
caller, a grant is kept with its segment, a finish or cancel of a ticket already gone is answered as done. The
restarted actor finds the engines (named and detached, so they outlive it, with the KV they hold) and takes back
its sessions from `actors.scheduler_journal`, which it writes before answering any call that changed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import math
import os
import time
from dataclasses import asdict

import ray

from actors.scheduler_journal import SchedulerJournal
from runtime.engine.job_hints import SegmentOutcome
from runtime.engine.telemetry import HOLDINGS_NONE
from runtime.serving.config import VLLM_BASELINE, ServeSettings
from runtime.serving.dispatch import (
    Dispatcher,
    Finished,
    Grant,
    NoEngine,
    QueueFull,
    SegmentRequest,
    SessionBusy,
    UnknownTicket,
)
from runtime.serving.metrics import SchedulerMetrics
from runtime.serving.shards import shard_engines

log = logging.getLogger(__name__)
SCHEDULER_NAME = "agentriver-scheduler"
MONITOR_S = 1.0
# The engine watch asks at most this many engines per second for their report: each ask is a Ray call that costs the
# scheduler as much as a caller's, so a fleet of 1,000 asked every second halved what callers got
# (bench.control_plane). A large fleet is asked in turns, each engine at least every WATCH_PERIOD_MAX_S: an engine
# remembers a segment it finished for twice that (actors.engine_actor.FINISHED_KEEP_S), so no grant whose `finish`
# never came goes unnoticed. An engine that dies under a segment is known at once anyway, from the caller
# whose stream broke (`retry`).
WATCH_PER_S = 200
# The engines of a round are asked in this many parts spread over the second. Asked at once, 200 engines' answers
# took 100-190 ms to arrive (timed in the actor), a burst the callers' calls waited behind: spread, the p99 added
# latency at an offered 500 segments/s fell from 177-196 to 65-67 ms (bench.control_plane --rates, two pairs).
WATCH_PARTS = 10
WATCH_PERIOD_MAX_S = 5.0
STATS_TIMEOUT_S = 5.0  # an engine that takes longer to say how it is gets no new work until it answers
# A grant is abandoned when its segment ended on the engine this long ago without a `finish`, or when the engine
# never started it this long after it was granted (runtime.serving.dispatch.Dispatcher.reconcile).
END_GRACE_S = 2 * MONITOR_S
START_GRACE_S = 30.0
# Python's full (oldest-generation) garbage collection walks every live object: with 100,000 sessions it took up to
# ~1 s every ~10 s under load, stalling the actor's one event loop (bench.control_plane: added-latency p99 0.9-1.3 s
# at 256 callers). Each watch tick therefore freezes what is alive (gc.freeze: later collections skip it), so a
# collection walks only what the last second made: 1,636 against 1,430 segments/s and p99 0.37 against 0.86 s
# (256 callers, one run each). A cycle that becomes garbage among frozen objects is freed by the full collection
# of everything run every GC_FULL_S (one stall of that size per period, not every ~10 s).
GC_FULL_S = 600.0
CONTROL_SLOTS = 256  # concurrent calls left for acquire/finish/cancel/views when every parked caller waits


def collect_garbage(full_due_at: float) -> float:
    """A watch tick's share of garbage collection (see GC_FULL_S): freeze what is alive, after collecting everything
    when the full collection is due (`full_due_at`, monotonic seconds). Returns when the next one is due."""
    if time.monotonic() >= full_due_at:
        gc.unfreeze()
        gc.collect()
        full_due_at = time.monotonic() + GC_FULL_S
    gc.freeze()
    return full_due_at


def scheduler_concurrency(settings: ServeSettings) -> int:
    """The actor's max_concurrency: every call that can park (queued + retried segments) plus room for control."""
    return settings.max_queue + settings.engines * settings.engine.max_num_seqs + CONTROL_SLOTS


def watched(engines: int, tick: int, per_s: float = WATCH_PER_S) -> range:
    """The engines the watch asks at its `tick`-th round: all of a fleet up to `per_s`, else every k-th, in turns,
    with k as small as keeps to `per_s` and no larger than WATCH_PERIOD_MAX_S allows. A scheduler shard watches
    its own engines at its share of WATCH_PER_S, so a sharded fleet's engines are asked as often as one
    scheduler would ask them, and no more (on a shared machine, each extra ask is a Ray call)."""
    turns = max(1, min(math.ceil(engines / per_s), int(WATCH_PERIOD_MAX_S / MONITOR_S)))
    return range(tick % turns, engines, turns)


async def ask_in_parts(indices: range, ask, period_s: float, parts: int) -> list[asyncio.Future]:
    """Start `ask(i)` for every index in `parts` groups, `period_s / parts` apart (the first after one gap), and
    return them started, not awaited: a burst of answers arrives spread over the period instead of at once."""
    started = []
    for part in range(parts):
        await asyncio.sleep(period_s / parts)
        started += [asyncio.ensure_future(ask(i)) for i in indices[part::parts]]
    return started


def scheduler_name(shard: int) -> str:
    """Shard 0 keeps the unsharded scheduler's name, so a deployment that adds shards keeps its first one."""
    return SCHEDULER_NAME if shard == 0 else f"{SCHEDULER_NAME}-{shard}"


def engine_name(index: int) -> str:
    return f"agentriver-engine-{index}"


def engine_handle(s: ServeSettings, index: int):
    """Engine `index`: found by name when it exists (engines are detached: they outlive a restart of the
    scheduler, with the KV they hold), created otherwise. Its class is imported only to create one: it imports
    vLLM, which would add seconds to every restart of the scheduler."""
    try:
        return ray.get_actor(engine_name(index), namespace=s.namespace)
    except ValueError:
        from actors.engine_actor import EngineActor

        return EngineActor.options(name=engine_name(index), namespace=s.namespace, lifetime="detached",
                                   get_if_exists=True, num_cpus=s.engine_num_cpus, num_gpus=s.engine_num_gpus,
                                   resources=dict(s.engine_resources)
                                   ).remote(engine_name(index), s.model, s.engine.model_dump(), s.policy)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class GlobalScheduler:
    def __init__(self, settings: dict, engines: list | None = None, shard: int = 0):
        """`shard`: which of `settings.scheduler_shards` this is; it plans for its own engines only
        (`runtime.serving.shards`). `engines`: handles to plan with instead of the engine actors, each answering
        `info`, `stats`, `release`, `abort` and `shutdown` as `EngineActor` does (a simulated fleet:
        bench.control_plane)."""
        self.settings = s = ServeSettings(**settings)
        self.shard = shard
        self.fleet_indices = list(shard_engines(s.engines, s.scheduler_shards, shard))  # by its local index
        self.engines = engines if engines is not None else [engine_handle(s, i) for i in self.fleet_indices]
        self.d: Dispatcher | None = None
        self.journal: SchedulerJournal | None = None
        self.waiters: dict[str, asyncio.Future] = {}
        self.metrics = SchedulerMetrics()
        self.kv_seq = [0] * len(self.engines)  # per engine: the last KV change its report said
        self._starting: asyncio.Future | None = None
        self._monitor_task: asyncio.Task | None = None

    async def ready(self) -> dict:
        """Waits until every engine has started (vLLM loads the model), then describes the cluster."""
        await self._started()
        return self.describe()

    async def _started(self) -> None:
        """Every call waits for this: after a restart, calls Ray re-sends arrive before the sessions are back."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        """A restarted scheduler takes back what its journal holds, and plans with the engines' shapes stored
        there (an engine that died meanwhile, perhaps with its node, could not answer; the first poll marks it
        down). A fresh one clears the journal and asks each engine its shape."""
        journal = SchedulerJournal(self.settings.namespace if self.shard == 0 else
                                   f"{self.settings.namespace}/shard-{self.shard}", self.metrics.journal_write)
        learned, sessions = None, []
        if ray.get_runtime_context().was_current_actor_reconstructed:
            learned, sessions = await journal.load()
        else:
            await journal.clear()
        if learned is None:
            infos = await asyncio.gather(*(e.info.remote() for e in self.engines))
        else:
            infos, self.kv_seq = learned["engines"], learned["kv_seq"]
        policy = "fcfs" if self.settings.policy == VLLM_BASELINE else self.settings.policy
        self.d = Dispatcher(list(infos), policy, math.ceil(self.settings.max_queue / self.settings.scheduler_shards))
        self.d.restore(None if learned is None else learned["estimates"], sessions)
        journal.track(self.d)
        self.journal = journal
        self._monitor_task = asyncio.get_running_loop().create_task(self._monitor())

    # ------------------------------------------------------------------------------------------ segments
    async def acquire(self, requests: list[SegmentRequest]) -> list[Grant | None | Exception]:
        """Queue each caller's segment and answer, per request in order: its grant when an engine has room now, None
        when it is queued (its caller `wait`s), or the refusal (QueueFull, SessionBusy, NoEngine, ValueError) for
        that caller alone. Several callers' requests come in one call (`runtime.serving.coalesce`) and share one
        pass of the policy and one journal write. Safe to repeat: each ticket is its caller's."""
        await self._started()
        answers: list[Grant | None | Exception] = []
        for r in requests:
            try:
                self.d.submit(r.session_id, r.prompt_tokens, r.max_tokens, r.tool_category, r.kv_action, r.last,
                              r.ticket)
                answers.append(None)
            except (QueueFull, SessionBusy, NoEngine, ValueError) as e:
                answers.append(e)
        self._dispatch()
        answers = [a if a is not None else self.d.pending[r.ticket].grant for a, r in zip(answers, requests,
                                                                                       strict=True)]
        await self.journal.sync()  # after the grants were read: each one handed out is stored
        return answers

    async def wait(self, ticket: str, within_s: float | None = None) -> Grant | None:
        """The grant of a submitted segment, once an engine has room for it (again, if asked again); None when
        `within_s` passes first (the caller asks again: a wait that can end lets it tell a long queue from a
        scheduler that does not answer)."""
        await self._started()
        p = self.d.pending.get(ticket)
        if p is None:
            raise UnknownTicket(ticket)
        if p.grant is None:
            fut = asyncio.get_running_loop().create_future()
            self.waiters[ticket] = fut
            self._dispatch()
            try:
                done, _ = await asyncio.wait({fut}, timeout=within_s)
            except asyncio.CancelledError:
                self.waiters.pop(ticket, None)
                await self.cancel(ticket)
                raise
            if not done:
                self.waiters.pop(ticket, None)
                await self.journal.sync()  # the caller asks again for a ticket it was told is queued
                return None
            if fut.cancelled():  # given up meanwhile (by `cancel`)
                raise UnknownTicket(ticket)
            fut.result()  # NoEngine: every engine died meanwhile
        await self.journal.sync()
        return p.grant

    async def retry(self, ticket: str, emitted_tokens: int, engine: int) -> None:
        """The caller's engine (index `engine`) died under its segment: queue the rest again (another engine, or
        this one once it is back), and the caller `wait`s again; NoEngine when none is alive. Repeated, it
        changes nothing more."""
        await self._started()
        p = self.d.pending.get(ticket)
        if p is None:
            raise UnknownTicket(ticket)
        if p.engine == engine:
            try:
                self.d.fail(ticket, emitted_tokens)  # the engine's metrics follow at the next poll
            except NoEngine:
                self._refuse_queued()
                await self.journal.sync()
                raise
        await self.journal.sync()

    async def finish(self, reports: list[tuple[str, SegmentOutcome]]) -> list[bool]:
        """Each (ticket, outcome): the segment ended as its engine reported; False for a ticket already given up or
        finished (nothing recorded then). A job's last segment (a one-shot call, or one that said `last`) closes its
        session here, without one more call. Several callers' reports come in one call, as `acquire`'s requests
        do."""
        await self._started()
        done = [self._finish(ticket, outcome) for ticket, outcome in reports]
        self._dispatch()
        await self.journal.sync()
        return done

    def _finish(self, ticket: str, outcome: SegmentOutcome) -> bool:
        p = self.d.pending.get(ticket)
        if p is None or not self.d.finish(ticket, outcome):
            return False
        rec = self.d.records[p.job.job_id][-1]
        self.metrics.segment.observe(rec.queued_s + rec.service_s)
        self.metrics.queued.observe(rec.queued_s)
        if p.last:
            self._close(p.job.job_id)
        return True

    async def cancel(self, ticket: str) -> None:
        """The caller gave up (client gone, error): forget the segment, wherever it was. Idempotent."""
        await self._started()
        fut = self.waiters.pop(ticket, None)
        if fut is not None and not fut.done():
            fut.cancel()
        self.d.cancel(ticket)
        self._dispatch()
        await self.journal.sync()

    def _refuse_queued(self) -> None:
        for ticket in self.d.refuse_queued():
            fut = self.waiters.pop(ticket, None)
            if fut is not None and not fut.done():
                fut.set_exception(NoEngine())

    def _dispatch(self) -> None:
        for g in self.d.grant():
            fut = self.waiters.pop(g.ticket, None)
            if fut is None:  # granted while its caller was not waiting: its segment keeps it for the next wait
                continue
            if fut.done():  # its caller is gone
                self.d.cancel(g.ticket)
            else:
                fut.set_result(g)
        levels = getattr(self.d.policy, "cfg", None)
        self.metrics.set_queue(self.d.queue_by_level(), getattr(levels, "num_queues", 1))
        self.metrics.sessions.set(len(self.d.jobs))

    # ------------------------------------------------------------------------------------------ sessions
    async def session(self, session_id: str) -> dict:
        await self._started()
        return self.d.session_view(session_id)

    async def close(self, session_id: str) -> dict:
        await self._started()
        done = self._close(session_id)
        await self.journal.sync()
        return asdict(done)

    def _close(self, session_id: str) -> Finished:
        done = self.d.close(session_id)
        self.metrics.jct.observe(done.jct_s)
        self.metrics.sessions.set(len(self.d.jobs))
        return done

    def ping(self) -> bool:
        return self.d is not None

    def pid(self) -> int:
        return os.getpid()

    def metrics_text(self) -> bytes:
        return self.metrics.text()

    def describe(self) -> dict:
        """The cluster as operators see it: per engine, the dispatcher's view and what the engine says it holds for
        jobs between their segments (jobs it keeps state for, pinned KV blocks, host-swap blocks in use)."""
        engines = []
        for index, e in zip(self.fleet_indices, self.d.engines, strict=True):
            report = self.metrics.engines.reports.get(e.info.name, {})
            engines.append({**e.view(), "index": index, "shard": self.shard, "node": report.get("node"),
                            "kv_usage": report.get("kv_usage"), "holds": report.get("holdings", dict(HOLDINGS_NONE))})
        return {"policy": self.settings.policy, "max_model_len": self.d.max_model_len, "engines": engines,
                "ready": len(self.d.queue), "sessions": len(self.d.jobs)}

    # ------------------------------------------------------------------------------------------ engines
    async def _monitor(self) -> None:
        full_gc_at = time.monotonic() + GC_FULL_S
        for tick in itertools.count():
            asked = watched(len(self.engines), tick, WATCH_PER_S / self.settings.scheduler_shards)
            checks = await ask_in_parts(asked, self._check, MONITOR_S, WATCH_PARTS)
            full_gc_at = collect_garbage(full_gc_at)
            await asyncio.gather(*checks)
            for done in self.d.expire(self.settings.session_idle_s):
                self.metrics.jct.observe(done.jct_s)
            for index, jobs in self.d.take_releases().items():
                with contextlib.suppress(Exception):
                    self.engines[index].release.remote(jobs)
            self._refuse_queued()
            self._dispatch()
            try:
                await self.journal.sync()
                if self.journal.wrote_sessions:
                    await self.journal.save_learned({"estimates": self.d.learned(), "kv_seq": list(self.kv_seq),
                                                     "engines": [e.info for e in self.d.engines]})
            except Exception:  # noqa: BLE001 - the next tick writes what this one could not
                log.exception("the scheduler's checkpoint could not be written")

    async def _check(self, index: int) -> None:
        eng, handle = self.d.engines[index], self.engines[index]
        asked_at = self.d.clock()
        try:
            stats = await asyncio.wait_for(handle.stats.remote(self.kv_seq[index]), STATS_TIMEOUT_S)
            if not eng.alive:  # restarted by Ray (or back from a stall): an empty engine rejoins
                self.d.engine_up(index, await handle.info.remote())
        except Exception:  # noqa: BLE001 - any failure to answer means: no new work for it
            if eng.alive:
                self.d.engine_down(index)
            self.metrics.engines.reports[eng.info.name] = {"alive": False}
            return
        self.d.engine_kv_changes(index, stats["kv_changes"])
        self.kv_seq[index] = stats["kv_seq"]
        orphans = self.d.reconcile(index, set(stats["active"]), stats["finished"], asked_at, START_GRACE_S,
                                   END_GRACE_S)
        if orphans:
            handle.abort.remote(orphans)
        self.metrics.engines.reports[eng.info.name] = stats

    async def shutdown(self) -> None:
        """Stop for good: the engines go, and so does the checkpoint (a later scheduler starts fresh)."""
        if self._monitor_task is not None:
            self._monitor_task.cancel()
        if self.journal is not None:
            await self.journal.clear()
        for e in self.engines:
            with contextlib.suppress(Exception):
                await e.shutdown.remote()
            ray.kill(e, no_restart=True)


def scheduler_handles(settings: ServeSettings) -> list:
    """The cluster's scheduler actors, one per shard (created on first use, found by name afterwards)."""
    return [GlobalScheduler.options(name=scheduler_name(k), namespace=settings.namespace, lifetime="detached",
                                    get_if_exists=True, max_concurrency=scheduler_concurrency(settings),
                                    resources=dict(settings.scheduler_resources)
                                    ).remote(settings.model_dump(), None, k)
            for k in range(settings.scheduler_shards)]


def shutdown_schedulers(settings: ServeSettings) -> None:
    """Stop every shard for good, with its engines and checkpoint (those never started are skipped)."""
    for k in range(settings.scheduler_shards):
        with contextlib.suppress(ValueError):
            scheduler = ray.get_actor(scheduler_name(k), namespace=settings.namespace)
            ray.get(scheduler.shutdown.remote())
            ray.kill(scheduler)
