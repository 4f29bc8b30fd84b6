"""`GlobalScheduler`: the named, detached actor that owns the engines and the cluster's job table.

It wraps `runtime.serving.dispatch.Dispatcher` with what only an actor can do: create the engine actors, park each
caller until its segment is granted, and watch the engines (a second each: their KV state feeds the dispatcher,
a dead one stops getting work, a restarted one rejoins, idle sessions expire, and what each engine really runs is
reconciled with the grants).

Back-pressure: a caller `submit`s (answered at once: a ticket, or QueueFull / SessionBusy / NoEngine) and then
parks in `wait` until its segment is granted. Only queued and retried segments park, and `submit` refuses beyond
`max_queue`, so at most `max_queue` + one retry per engine sequence slot calls are parked at any time. The actor's
concurrency limit is set above that sum by construction (`scheduler_concurrency`), which leaves `finish`, `cancel`
and the views room to run however many callers wait: a burst can be refused, never wedge the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict

import ray

from actors.engine_actor import EngineActor
from runtime.engine.job_hints import SegmentOutcome
from runtime.engine.telemetry import HOLDINGS_NONE
from runtime.serving.config import VLLM_BASELINE, ServeSettings
from runtime.serving.dispatch import Dispatcher, Grant, NoEngine, UnknownTicket
from runtime.serving.metrics import SchedulerMetrics

SCHEDULER_NAME = "agentriver-scheduler"
MONITOR_S = 1.0
STATS_TIMEOUT_S = 5.0  # an engine that takes longer to say how it is gets no new work until it answers
# A grant is abandoned when its segment ended on the engine this long ago without a `finish`, or when the engine
# never started it this long after it was granted (runtime.serving.dispatch.Dispatcher.reconcile).
END_GRACE_S = 2 * MONITOR_S
START_GRACE_S = 30.0
CONTROL_SLOTS = 256  # concurrent calls left for submit/finish/cancel/views when every parked caller waits


def scheduler_concurrency(settings: ServeSettings) -> int:
    """The actor's max_concurrency: every call that can park (queued + retried segments) plus room for control."""
    return settings.max_queue + settings.engines * settings.engine.max_num_seqs + CONTROL_SLOTS


def engine_name(index: int) -> str:
    return f"agentriver-engine-{index}"


@ray.remote(num_cpus=0)
class GlobalScheduler:
    def __init__(self, settings: dict):
        self.settings = s = ServeSettings(**settings)
        self.engines = [EngineActor.options(name=engine_name(i), namespace=s.namespace, num_cpus=s.engine_num_cpus,
                                            num_gpus=s.engine_num_gpus).remote(engine_name(i), s.model,
                                                                                s.engine.model_dump(), s.policy)
                        for i in range(s.engines)]
        self.d: Dispatcher | None = None
        self.waiters: dict[str, asyncio.Future] = {}
        # Grants whose caller has not called `wait` yet; one that never does is reconciled away like any grant
        # its engine does not run.
        self.unclaimed: dict[str, Grant] = {}
        self.metrics = SchedulerMetrics()
        self.kv_seq = [0] * s.engines  # per engine: the last KV change its report said
        self._starting: asyncio.Future | None = None
        self._monitor_task: asyncio.Task | None = None

    async def ready(self) -> dict:
        """Waits until every engine has started (vLLM loads the model), then describes the cluster."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        return self.describe()

    async def _start(self) -> None:
        infos = await asyncio.gather(*(e.info.remote() for e in self.engines))
        policy = "fcfs" if self.settings.policy == VLLM_BASELINE else self.settings.policy
        self.d = Dispatcher(list(infos), policy, self.settings.max_queue)
        self._monitor_task = asyncio.get_running_loop().create_task(self._monitor())

    # ------------------------------------------------------------------------------------------ segments
    async def submit(self, session_id: str, prompt_tokens: int, max_tokens: int, tool_category: str = "",
                     kv_action: str = "", last: bool = False) -> str:
        """Queue a segment; answers at once with its ticket (or QueueFull, SessionBusy, NoEngine, ValueError).
        The caller then `wait`s for the grant, and `cancel`s the ticket if it gives up."""
        await self.ready()
        return self.d.submit(session_id, prompt_tokens, max_tokens, tool_category, kv_action, last)

    async def wait(self, ticket: str) -> Grant:
        """The grant of a submitted segment, once an engine has room for it."""
        if ticket in self.unclaimed:
            return self.unclaimed.pop(ticket)
        if ticket not in self.d.pending:
            raise UnknownTicket(ticket)
        fut = asyncio.get_running_loop().create_future()
        self.waiters[ticket] = fut
        self._dispatch()
        try:
            return await fut
        except asyncio.CancelledError:
            self.waiters.pop(ticket, None)
            self.cancel(ticket)
            raise

    async def retry(self, ticket: str, emitted_tokens: int) -> Grant:
        """The caller's engine died under its segment: queue the rest again (another engine, or this one once
        it is back); NoEngine when none is alive."""
        try:
            self.d.fail(ticket, emitted_tokens)  # the engine's metrics follow at the next poll
        except NoEngine:
            self._refuse_queued()
            raise
        return await self.wait(ticket)

    def finish(self, ticket: str, outcome: SegmentOutcome) -> bool:
        """The segment ended as its engine reported; False when the ticket had already been given up (nothing
        recorded then)."""
        p = self.d.pending.get(ticket)
        if p is None or not self.d.finish(ticket, outcome):
            return False
        rec = self.d.records[p.job.job_id][-1]
        self.metrics.segment.observe(rec.queued_s + rec.service_s)
        self.metrics.queued.observe(rec.queued_s)
        self._dispatch()
        return True

    def cancel(self, ticket: str) -> None:
        """The caller gave up (client gone, error): forget the segment, wherever it was. Idempotent."""
        fut = self.waiters.pop(ticket, None)
        if fut is not None and not fut.done():
            fut.cancel()
        self.unclaimed.pop(ticket, None)
        self.d.cancel(ticket)
        self._dispatch()

    def _refuse_queued(self) -> None:
        for ticket in self.d.refuse_queued():
            fut = self.waiters.pop(ticket, None)
            if fut is not None and not fut.done():
                fut.set_exception(NoEngine())

    def _dispatch(self) -> None:
        for g in self.d.grant():
            fut = self.waiters.pop(g.ticket, None)
            if fut is None:  # granted between its caller's submit and wait: kept for the wait
                self.unclaimed[g.ticket] = g
            elif fut.done():  # its caller is gone
                self.d.cancel(g.ticket)
            else:
                fut.set_result(g)
        levels = getattr(self.d.policy, "cfg", None)
        self.metrics.set_queue(self.d.queue_by_level(), getattr(levels, "num_queues", 1))
        self.metrics.sessions.set(len(self.d.jobs))

    # ------------------------------------------------------------------------------------------ sessions
    def session(self, session_id: str) -> dict:
        return self.d.session_view(session_id)

    def close(self, session_id: str) -> dict:
        done = self.d.close(session_id)
        self.metrics.jct.observe(done.jct_s)
        self.metrics.sessions.set(len(self.d.jobs))
        return asdict(done)

    def metrics_text(self) -> bytes:
        return self.metrics.text()

    def describe(self) -> dict:
        """The cluster as operators see it: per engine, the dispatcher's view and what the engine says it holds for
        jobs between their segments (jobs it keeps state for, pinned KV blocks, host-swap blocks in use)."""
        engines = []
        for e in self.d.engines:
            report = self.metrics.engines.reports.get(e.info.name, {})
            engines.append({**e.view(), "kv_usage": report.get("kv_usage"),
                            "holds": report.get("holdings", dict(HOLDINGS_NONE))})
        return {"policy": self.settings.policy, "max_model_len": self.d.max_model_len, "engines": engines,
                "ready": len(self.d.queue), "sessions": len(self.d.jobs)}

    # ------------------------------------------------------------------------------------------ engines
    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_S)
            await asyncio.gather(*(self._check(i) for i in range(len(self.engines))))
            for done in self.d.expire(self.settings.session_idle_s):
                self.metrics.jct.observe(done.jct_s)
            for index, jobs in self.d.take_releases().items():
                with contextlib.suppress(Exception):
                    self.engines[index].release.remote(jobs)
            self._refuse_queued()
            self._dispatch()

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
        self.unclaimed = {t: g for t, g in self.unclaimed.items() if t in self.d.pending}
        self.metrics.engines.reports[eng.info.name] = stats

    async def shutdown(self) -> None:
        if self._monitor_task is not None:
            self._monitor_task.cancel()
        for e in self.engines:
            with contextlib.suppress(Exception):
                await e.shutdown.remote()
            ray.kill(e, no_restart=True)


def scheduler_handle(settings: ServeSettings):
    """The cluster's scheduler actor (created on first use, found by name afterwards)."""
    return GlobalScheduler.options(name=SCHEDULER_NAME, namespace=settings.namespace, lifetime="detached",
                                   get_if_exists=True, max_concurrency=scheduler_concurrency(settings)
                                   ).remote(settings.model_dump())
