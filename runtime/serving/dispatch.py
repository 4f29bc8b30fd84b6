"""The cluster's job table and its dispatch decisions: what the GlobalScheduler actor runs (it adds only Ray).

An agent session is one `Job`. Its history (waited time, attained service, MLFQ level, the tools it called)
lives here across its segments, whichever engine runs them. Ready segments of every session wait in one
`GlobalQueue` - the code the simulator's "global" placement runs - ordered by the policy (Astraea: Stateful-MLFQ
+ HRRN) and pulled by an engine only while its KV room and sequence slots allow (admission control). Engines pull
one segment at a time, least predicted backlog first, so a new job goes where it would finish soonest; an engine
leaves a new segment to another that takes it at a lower join cost (the simulator's deferral, answered from a
`JoinCostIndex`); a resuming job stays with the engine that holds its KV unless recomputing it elsewhere costs less
than that engine's backlog.

The data path does not pass through here: a caller `submit`s a segment, waits for its `Grant` (an engine and the
`JobHint` to send with the request), talks to that engine itself, then reports `finish` with the engine's
`SegmentOutcome` (or `fail`, when the engine died: the segment is queued again and recomputed elsewhere, so it is
neither lost nor answered twice). The job's transitions are `runtime.agents.lifecycle`'s, as in the simulator.

The dispatcher is the scheduler actor's whole memory, and that actor can die. So it names the sessions each change
touched (`take_changes`) as `SessionCheckpoint`s for the actor to store before it tells any caller, and takes them
back (`restore`) when the actor restarts: a caller never hears of a grant or a finish that a restart forgets.

What an engine holds for a job (its mirror, a pin, a host copy) is released there when the job no longer needs
it: the session closed or expired, or its next segment was granted elsewhere. The dispatcher lists those jobs
per engine (`take_releases`); the scheduler actor sends them.
"""

from __future__ import annotations

import bisect
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from runtime.agents.cluster import DEFER_TO_CHEAPER, GlobalQueue, JoinCostIndex, NextStep, engine_slowdown
from runtime.agents.costmodel import CPU_DEFAULT_COST, HOST_COPY_BYTES_PER_S, DeploymentProfile, StepCost
from runtime.agents.job import Job, KVState, Phase, Segment
from runtime.agents.kv import blocks_for
from runtime.agents.lifecycle import Lifecycle
from runtime.agents.policy import Policy, PolicyContext, SegmentStats, make_policy
from runtime.agents.predictor import Predictor
from runtime.engine.job_hints import JobHint, SegmentOutcome

ONLINE = "online"  # a live cluster learns output lengths as segments end: max_tokens is only a bound


@dataclass(frozen=True)
class EngineShape:
    """What an engine reports when it joins: its real shape, which the cluster's policy plans with."""

    name: str
    kv_blocks: int
    block_size: int
    max_num_seqs: int
    max_model_len: int
    kv_bytes_per_token: int = 0
    host_swap_blocks: int = 0  # host memory for swapped KV (0: the engine never swaps)
    max_batched_tokens: int = 8192
    cost: StepCost = CPU_DEFAULT_COST  # the step cost its plugin predicts with
    link_bytes_per_s: float = HOST_COPY_BYTES_PER_S

    def profile(self) -> DeploymentProfile:
        return DeploymentProfile(name=self.name, cost=self.cost, kv_bytes_per_token=self.kv_bytes_per_token,
                                 gpu_kv_tokens=self.kv_blocks * self.block_size,
                                 cpu_kv_tokens=self.host_swap_blocks * self.block_size,
                                 link_bytes_per_s=self.link_bytes_per_s, max_model_len=self.max_model_len,
                                 max_num_seqs=self.max_num_seqs, max_batched_tokens=self.max_batched_tokens,
                                 block_size=self.block_size)


@dataclass(frozen=True)
class Grant:
    ticket: str
    session_id: str
    engine: int
    engine_name: str
    hint: JobHint
    max_tokens: int


@dataclass(frozen=True)
class SegmentRequest:
    """A caller's next segment of a session, as it asks the scheduler for it (`Dispatcher.submit`'s arguments; the
    ticket named by the caller, so asking again is safe)."""

    ticket: str
    session_id: str
    prompt_tokens: int
    max_tokens: int
    tool_category: str = ""
    kv_action: str = ""
    last: bool = False


@dataclass
class SegmentRecord:
    """One segment as the session view shows it."""

    index: int
    prompt_tokens: int
    max_tokens: int
    tool_category: str = ""
    output_tokens: int = 0
    queued_s: float = 0.0
    service_s: float = 0.0
    engine: str = ""
    retries: int = 0  # times its engine died under it and it was recomputed elsewhere


class QueueFull(Exception):
    """The cluster's ready queue is at its bound; retry after `retry_after_s`."""

    def __init__(self, ready: int, retry_after_s: float):
        super().__init__(f"{ready} segments are waiting for an engine (the queue's bound); retry in "
                         f"{retry_after_s:.0f} s")
        self.ready, self.retry_after_s = ready, retry_after_s

    def __reduce__(self):  # rebuilt from its fields where Ray delivers it
        return QueueFull, (self.ready, self.retry_after_s)


class SessionBusy(Exception):
    """A session has a segment queued or running; an agent's calls are sequential."""


class UnknownSession(KeyError):
    pass


class NoEngine(Exception):
    """No engine is alive to take work."""

    def __init__(self, message: str = "no engine is alive; retry when one has restarted"):
        super().__init__(message)


class UnknownTicket(KeyError):
    """A ticket that is not (or no longer) queued or running: its segment was cancelled or reconciled away."""


@dataclass
class _Pending:
    job: Job
    ticket: str
    max_tokens: int
    kv_action: str
    last: bool  # the caller says the job ends with this segment (a call without a session, or one saying `last`)
    engine: int = -1  # while granted
    grant: Grant | None = None  # while granted: what its caller is (or was) handed
    slot: tuple[int, float, float] = (0, 0.0, 0.0)  # while granted: KV blocks, predicted s, granted at


@dataclass
class SessionCheckpoint:
    """An open session as the scheduler must remember it across its own restart: the job (history, MLFQ level, where
    its KV is), its segment log, and the segment it has queued or granted."""

    job: Job
    records: list[SegmentRecord]
    pending: _Pending | None
    last_done_s: float | None
    ended_on_engine: bool


class EngineLedger:
    """One engine as the dispatcher sees it (implements `runtime.agents.cluster.PlacementTarget`): capacity from
    its report, in-flight work from the grants, KV kept between segments from its KV log."""

    def __init__(self, index: int, info: EngineShape, dispatcher: Dispatcher):
        self.index, self.info, self._d = index, info, dispatcher
        self.alive = True
        self.slowdown = 1.0  # set with the dispatcher's predictor (`engine_slowdown` of the cost it reported)
        self.inflight: dict[str, tuple[int, float, float]] = {}  # ticket -> (KV blocks, predicted s, granted at)
        self.held: dict[str, int] = {}  # job id -> blocks of its KV kept here while it waits (change: `hold`)
        # running sums of `inflight` and `held`: read at every pull (a thousand engines per grant), so not re-added
        self._reserved = 0
        self._backlog_s = 0.0
        self._held = 0

    def start(self, ticket: str, blocks: int, predicted_s: float, granted_at: float) -> None:
        self.inflight[ticket] = (blocks, predicted_s, granted_at)
        self._reserved += blocks
        self._backlog_s += predicted_s
        self._d.reorder(self)

    def end(self, ticket: str) -> None:
        entry = self.inflight.pop(ticket, None)
        if entry is not None:
            self._reserved -= entry[0]
            # an idle engine's backlog is exactly 0: float residue would order idle engines by rounding error
            self._backlog_s = self._backlog_s - entry[1] if self.inflight else 0.0
            self._d.reorder(self)

    def hold(self, job_id: str, blocks: int) -> None:
        """The job's KV stays here while it waits (`blocks` = 0: no longer)."""
        self._held += blocks - self.held.pop(job_id, 0)
        if blocks:
            self.held[job_id] = blocks

    @property
    def now(self) -> float:
        return self._d.clock()

    def room(self) -> tuple[int, int]:
        if not self.alive:
            return 0, 0
        blocks = self.info.kv_blocks - self._reserved
        if not (self._d.policy.evicts_for_admission or not self.inflight):
            blocks -= self._held  # kept KV is given up for new work only by policies that evict
        return blocks, self.info.max_num_seqs - len(self.inflight)

    def backlog_s(self) -> float:
        """Predicted compute of the segments running here (as predicted when each was granted), in this engine's
        own time."""
        return max(self._backlog_s, 0.0)

    def held_blocks(self, job: Job) -> int:
        return self.held.get(job.job_id, 0)

    def next_step(self) -> NextStep:
        """Its decode step as its grants make it, priced with the cost it reported: every granted segment decoding
        over the KV reserved for it (its context and the output it may generate; the engine's own step log is not
        seen here)."""
        cost, decoding = self.info.cost, len(self.inflight)
        return NextStep(cost.step_s(0, decoding, self._reserved * self.info.block_size, 0.0), cost.token_s,
                        cost.kv_read_s, decoding)

    def receive_s(self, tokens: int) -> None:
        """Real engines do not copy KV from each other (yet): a job that moves is recomputed."""
        return None

    def view(self) -> dict:
        kept = Counter(self._d.jobs[j].kv.value for j in self.held if j in self._d.jobs)
        return {"name": self.info.name, "alive": self.alive, "running": len(self.inflight),
                "kv_blocks": self.info.kv_blocks, "kv_blocks_reserved": self._reserved,
                "kv_blocks_held": self._held, "paused_by_kv": dict(kept)}


@dataclass
class Finished:
    """A session that ended: what the JCT metrics record."""

    session_id: str
    jct_s: float
    segments: int


@dataclass
class Dispatcher:
    engines_info: list[EngineShape]
    policy_name: str = "astraea"
    max_queue: int = 1024
    clock: Callable[[], float] = time.time
    policy_config: dict | None = None
    # How long one full policy order of the ready queue is reused (GlobalQueue): re-ordering 10,000 ready segments
    # costs ~0.1 s of Python when the predictor's estimates moved (bench.jct_cluster measures it).
    refresh_s: float = 0.5
    jobs: dict[str, Job] = field(default_factory=dict, init=False)  # session id -> its job
    pending: dict[str, _Pending] = field(default_factory=dict, init=False)  # ticket -> queued or granted segment
    queued: dict[str, _Pending] = field(default_factory=dict, init=False)  # session id -> its queued segment
    current: dict[str, _Pending] = field(default_factory=dict, init=False)  # session id -> queued or granted one
    records: dict[str, list[SegmentRecord]] = field(default_factory=dict, init=False)
    ended_on_engine: set[str] = field(default_factory=set, init=False)  # jobs whose last segment the engine knew
    last_done_s: dict[str, float] = field(default_factory=dict, init=False)
    changed: set[str] = field(default_factory=set, init=False)  # sessions changed since `take_changes`
    # sessions in a tool call, longest in it first: `expire` looks only at those past the idle time, not at every
    # session (a scan of 100,000 sessions each second would stall every caller of the scheduler for ~20 ms)
    in_tool: dict[str, None] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not self.engines_info:
            raise ValueError("a dispatcher needs at least one engine")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        sizes = {e.block_size for e in self.engines_info}
        if len(sizes) > 1:
            raise ValueError(f"engines disagree on block_size: {sorted(sizes)}")
        first = self.engines_info[0]
        self.max_model_len = min(e.max_model_len for e in self.engines_info)
        profile = first.profile()
        self.bs = first.block_size
        self.releases: dict[int, dict[str, float]] = {}  # engine -> {job id: arrival} to release there
        # alive engines as (backlog, slowdown, index), kept sorted: the least loaded pull first, of equally loaded
        # (idle) ones the fastest
        self._by_backlog: list[tuple[float, float, int]] = []
        self._backlog_key: dict[int, tuple[float, float, int]] = {}
        self.engines = [EngineLedger(i, info, self) for i, info in enumerate(self.engines_info)]
        self.join_costs = JoinCostIndex(self.engines)
        pred = Predictor(profile.cost, output_estimator=ONLINE, max_len=self.max_model_len)
        self._learn_with(pred, make_policy(self.policy_name, PolicyContext(pred, profile), self.policy_config))

    def _learn_with(self, pred: Predictor, policy: Policy) -> None:
        self.pred, self.policy = pred, policy
        for eng in self.engines:
            eng.slowdown = engine_slowdown(eng.info.cost, pred)
            self.reorder(eng)
        self.life = Lifecycle(policy, pred)
        self.queue = GlobalQueue(policy, pred, self.bs, self.engines, self.refresh_s,
                                 defer_to_cheaper=DEFER_TO_CHEAPER, elsewhere=self.join_costs.seen_from)

    # ------------------------------------------------------------------------------------------ segments
    def submit(self, session_id: str, prompt_tokens: int, max_tokens: int, tool_category: str = "",
               kv_action: str = "", last: bool = False, ticket: str | None = None) -> str:
        """Queue the session's next segment (`prompt_tokens`: its whole context as sent); returns its ticket. A
        caller may name the ticket itself, which makes the call safe to repeat: a ticket already queued or granted
        for this session is answered as it was (a retry of a submit whose answer was lost)."""
        if ticket is not None and ticket in self.pending:
            if self.pending[ticket].job.job_id != session_id:
                raise ValueError(f"ticket: {ticket!r} belongs to another session")
            return ticket
        if prompt_tokens < 1 or max_tokens < 1:
            raise ValueError(f"prompt_tokens and max_tokens must be >= 1, got {prompt_tokens} and {max_tokens}")
        if prompt_tokens + max_tokens > self.max_model_len:
            raise ValueError(f"prompt of {prompt_tokens} tokens + max_tokens {max_tokens} exceeds the model's "
                             f"context length {self.max_model_len}")
        if not self.any_alive():
            raise NoEngine()
        if len(self.queue) >= self.max_queue:
            raise QueueFull(len(self.queue), self.retry_after_s())
        now = self.clock()
        job = self.jobs.get(session_id)
        if job is None:
            job = self.jobs[session_id] = Job(session_id, now, ())
            self.records[session_id] = []
        elif job.phase in (Phase.READY, Phase.RUNNING):
            raise SessionBusy(f"session {session_id!r} already has a segment in progress")
        elif job.phase is Phase.DONE:
            raise SessionBusy(f"session {session_id!r} has ended; close it (or use a new id) to start another")
        if prompt_tokens <= job.context_tokens:  # the client rewrote its history: nothing known carries over
            job.context_tokens = 0
        new = prompt_tokens - job.context_tokens
        self._mirror(job, new, max_tokens, tool_category, last)
        self.records[session_id].append(SegmentRecord(job.seg, new, max_tokens, tool_category))
        if job.phase is Phase.TOOL:  # back from its tool call
            self.life.tool_returned(job, now)
            del self.in_tool[session_id]
        else:
            self.life.ready(job, now)
        self.queue.submit(job)
        # never reused, also across restarts: a late report cannot hit a retry
        ticket = ticket or f"{session_id}/{job.seg}/{uuid.uuid4().hex[:12]}"
        p = _Pending(job, ticket, max_tokens, kv_action, last)
        self.pending[ticket] = self.queued[session_id] = self.current[session_id] = p
        self.changed.add(session_id)
        return ticket

    def grant(self) -> list[Grant]:
        """Segments to start now: engines pull one at a time, least predicted backlog first (as each round began),
        while any fits."""
        grants: list[Grant] = []
        progress = True
        while progress and len(self.queue):
            progress = False
            for *_, index in list(self._by_backlog):
                if not len(self.queue):
                    break
                eng = self.engines[index]
                for job in self.queue.pull(eng, limit=1):
                    grants.append(self._start(self.queued.pop(job.job_id), eng))
                    progress = True
        return grants

    def reorder(self, eng: EngineLedger) -> None:
        """Keep `eng` at its place in the backlog order and the join-cost index (called when its grants or liveness
        changed): sorting a thousand engines at every grant would cost more than the grant."""
        self.join_costs.update(eng, eng.alive)
        old = self._backlog_key.pop(eng.index, None)
        if old is not None:
            del self._by_backlog[bisect.bisect_left(self._by_backlog, old)]
        if eng.alive:
            key = self._backlog_key[eng.index] = (eng.backlog_s(), eng.slowdown, eng.index)
            bisect.insort(self._by_backlog, key)

    def _start(self, p: _Pending, eng: EngineLedger) -> Grant:
        now = self.clock()
        job = p.job
        waited = self.life.admit(job, now)
        if job.seg > 0 and job.engine != eng.index:  # moved: what its old engine holds for it is no longer wanted
            self._release(job)
        old = self.life.moved(job, eng.index)
        if old is not None:
            self.engines[old].hold(job.job_id, 0)
            self.life.kv_kept(job, KVState.NONE, 0)
        eng.hold(job.job_id, 0)  # the segment takes over what was kept for it
        p.engine = eng.index
        p.slot = (blocks_for(job.input_tokens + p.max_tokens, self.bs), self.pred.compute_s(job) * eng.slowdown, now)
        eng.start(p.ticket, *p.slot)
        rec = self.records[job.job_id][-1]
        rec.queued_s += waited
        rec.engine = eng.info.name
        hint = JobHint(job_id=job.job_id, arrival_s=job.arrival_s, seg=job.seg, context_tokens=job.context_tokens,
                       prompt_tokens=job.current.prompt_tokens, output_tokens=p.max_tokens,
                       tools=tuple(s.api_category for s in job.segments[:job.seg]),
                       tool_category=job.current.api_category, last=p.last, kv_action=p.kv_action,
                       level=job.level, waited_s=job.waited_s, attained_s=job.attained_s,
                       forecast_output_tokens=self.pred.output_tokens(job),
                       forecast_segments=self.pred.remaining_segments(job))
        p.grant = Grant(p.ticket, job.job_id, eng.index, eng.info.name, hint, p.max_tokens)
        self.changed.add(job.job_id)
        return p.grant

    def finish(self, ticket: str, outcome: SegmentOutcome) -> bool:
        """The segment ended on its engine as `outcome` says (measured prefill, the engine's own queueing, where it
        keeps the job's KV). False when the ticket was already given up (reconciled away): nothing changes then."""
        p = self.pending.get(ticket)
        if p is None or p.engine < 0:
            return False
        job, eng = p.job, self.engines[p.engine]
        del self.pending[ticket]
        del self.current[job.job_id]
        self.changed.add(job.job_id)
        eng.end(ticket)
        now = self.clock()
        job.waited_s += outcome.queued_s
        self.life.segment_done(job, now, SegmentStats(outcome.service_s, outcome.prefill_tokens,
                                                      outcome.output_tokens))
        if job.phase is Phase.DONE:  # a `last` segment: the engine released the job with it
            self.ended_on_engine.add(job.job_id)
        else:
            self.in_tool[job.job_id] = None
        self.life.kv_kept(job, KVState(outcome.kv_state), outcome.kv_tokens)
        if job.kv is KVState.PRESERVED:
            eng.hold(job.job_id, blocks_for(outcome.kv_tokens, self.bs))
        rec = self.records[job.job_id][-1]
        rec.output_tokens, rec.service_s = outcome.output_tokens, outcome.service_s
        rec.queued_s += outcome.queued_s
        self.last_done_s[job.job_id] = now
        return True

    def fail(self, ticket: str, emitted_tokens: int = 0) -> None:
        """The segment's engine died under it after `emitted_tokens` reached the client: mark the engine down
        (everything it held is gone) and queue the rest of the segment again, its history kept. With no engine
        left alive the segment is cancelled instead and NoEngine raised: nothing would ever run it."""
        p = self.pending.get(ticket)
        if p is None or p.engine < 0:
            raise UnknownTicket(ticket)
        self.engines[p.engine].end(ticket)
        self.engine_down(p.engine)
        if not self.any_alive():
            self.cancel(ticket)
            raise NoEngine()
        job = p.job
        self.life.kv_kept(job, KVState.NONE, 0)
        self.life.ready(job, self.clock())
        p.engine, p.grant = -1, None
        self.queued[job.job_id] = p
        self.changed.add(job.job_id)
        if emitted_tokens:  # the retry continues after what was sent: its prompt grows, its budget shrinks
            p.max_tokens = max(1, p.max_tokens - emitted_tokens)
            seg = job.current
            job.segments = (*job.segments[:job.seg], Segment(seg.index, seg.prompt_tokens + emitted_tokens,
                                                             p.max_tokens, seg.api_category, 0.0),
                            *job.segments[job.seg + 1:])
        self.records[job.job_id][-1].retries += 1
        self.queue.submit(job)

    def cancel(self, ticket: str) -> None:
        """The caller gave up on a queued or granted segment (client gone): forget it, keep the session."""
        p = self.pending.pop(ticket, None)
        if p is None:
            return
        job = p.job
        del self.current[job.job_id]
        self.changed.add(job.job_id)
        if p.engine >= 0:
            self.engines[p.engine].end(ticket)
        else:
            self.queue.remove(job)
            del self.queued[job.job_id]
        self.records[job.job_id].pop()
        if job.seg == 0:
            self._forget(job.job_id)
        else:
            self.life.withdrawn(job, self.clock())
            self.in_tool[job.job_id] = None

    def refuse_queued(self) -> list[str]:
        """With no engine alive, cancel every queued segment (their callers are told at once) and return their
        tickets; with one alive, nothing."""
        if self.any_alive():
            return []
        tickets = [p.ticket for p in self.queued.values()]
        for t in tickets:
            self.cancel(t)
        return tickets

    def reconcile(self, index: int, running: set[str], finished: dict[str, float], asked_at: float,
                  start_grace_s: float, end_grace_s: float) -> list[str]:
        """Match what the dispatcher counts as running on engine `index` with what the engine said (in a report
        asked for at `asked_at`) it runs and recently finished (ticket -> seconds since). A grant is given up as
        abandoned - cancelled, its KV room and slot back - when its segment ended there more than `end_grace_s` ago
        and no `finish` came, or when the engine never started it and it was granted more than `start_grace_s`
        before the report (its caller vanished between grant and start; generous, as a loaded ingress can be slow
        to start a stream, and a caller that leaves normally cancels at once). Returns the tickets the engine runs
        that are not granted to it (their callers gave up): the engine should abort them."""
        eng = self.engines[index]
        for ticket, (_, _, granted_at) in list(eng.inflight.items()):
            if ticket in running:
                continue
            ended = finished.get(ticket)
            if (ended is not None and ended > end_grace_s) or (ended is None and granted_at < asked_at - start_grace_s):
                self.cancel(ticket)
        return sorted(t for t in running if t not in eng.inflight)

    def any_alive(self) -> bool:
        return any(e.alive for e in self.engines)

    # ------------------------------------------------------------------------------------------ sessions
    def close(self, session_id: str) -> Finished:
        job = self._job(session_id)
        if job.phase in (Phase.READY, Phase.RUNNING):
            raise SessionBusy(f"session {session_id!r} has a segment in progress; close it when that ends")
        if job.phase is not Phase.DONE:
            self.life.close(job, self.clock())  # the predictor learns how many segments jobs of this kind have
        finished = Finished(session_id, self.last_done_s.get(session_id, job.arrival_s) - job.arrival_s,
                            len(self.records[session_id]))
        self._forget(session_id)
        return finished

    def expire(self, idle_s: float) -> list[Finished]:
        """Close sessions whose tool call has lasted longer than `idle_s` (their agent is gone)."""
        since = self.clock() - idle_s
        idle = []
        for session_id in self.in_tool:  # longest in a tool call first
            if self.jobs[session_id].tool_started_s >= since:
                break
            idle.append(session_id)
        return [self.close(s) for s in idle]

    def _forget(self, session_id: str) -> None:
        job = self.jobs.pop(session_id)
        self.in_tool.pop(session_id, None)
        self.changed.add(session_id)
        self.engines[job.engine].hold(session_id, 0)
        if session_id in self.ended_on_engine:
            self.ended_on_engine.discard(session_id)
        elif self.records.get(session_id):  # a segment ran: its engine holds state for the job
            self._release(job)
        self.records.pop(session_id, None)
        self.last_done_s.pop(session_id, None)

    def _release(self, job: Job) -> None:
        """Ask the engine that ran the job's last segment to drop what it holds for the job (that incarnation of
        the id: a new job may reuse it)."""
        self.releases.setdefault(job.engine, {})[job.job_id] = job.arrival_s

    def take_releases(self) -> dict[int, dict[str, float]]:
        """Jobs each engine should release now (engine index -> {job id: arrival}); handed out once."""
        out, self.releases = self.releases, {}
        return {i: jobs for i, jobs in out.items() if self.engines[i].alive}

    def _job(self, session_id: str) -> Job:
        job = self.jobs.get(session_id)
        if job is None:
            raise UnknownSession(session_id)
        return job

    def session_view(self, session_id: str) -> dict:
        job = self._job(session_id)
        now = self.clock()
        return {"session_id": session_id, "state": job.phase.value, "segments": len(self.records[session_id]),
                "queue_level": job.level, "waited_s": round(job.waited_now(now), 6),
                "service_s": round(job.attained_s, 6), "kv_state": job.kv.value, "kv_tokens": job.kv_tokens,
                "context_tokens": job.context_tokens, "engine": self.engines[job.engine].info.name,
                "age_s": round(now - job.arrival_s, 6),
                "segment_log": [asdict(r) for r in self.records[session_id]]}

    # ------------------------------------------------------------------------------------------ engines
    def engine_down(self, index: int) -> None:
        eng = self.engines[index]
        eng.alive = False
        self.reorder(eng)
        for job_id in list(eng.held):
            job = self.jobs.get(job_id)
            if job is not None and job.engine == index:
                job.kv, job.kv_tokens = KVState.NONE, 0
                self.changed.add(job_id)
            eng.hold(job_id, 0)

    def engine_up(self, index: int, info: EngineShape) -> None:
        eng = self.engines[index]
        eng.info, eng.alive = info, True
        self.reorder(eng)

    def engine_kv_changes(self, index: int, changes: list[tuple]) -> None:
        """Changes engine `index` made on its own to KV it kept for waiting jobs (job, the segment whose tool call
        it is, new state, tokens; e.g. released under memory pressure or by a TTL). A change to an earlier tool
        call of the job, or to a job that has since moved or resumed, is old news and ignored."""
        eng = self.engines[index]
        for _, job_id, seg, state, tokens in changes:
            job = self.jobs.get(job_id)
            if job is None or job.engine != index or job.phase is not Phase.TOOL or job.seg - 1 != seg:
                continue
            self.life.kv_kept(job, KVState(state), tokens)
            self.changed.add(job_id)
            eng.hold(job_id, blocks_for(tokens, self.bs) if job.kv is KVState.PRESERVED else 0)

    # ------------------------------------------------------------------------------------------ checkpoint
    def take_changes(self) -> dict[str, SessionCheckpoint | None]:
        """Each session changed since the last call, as it is now (None: closed)."""
        changed, self.changed = self.changed, set()
        return {s: self._checkpoint(s) for s in changed}

    def _checkpoint(self, session_id: str) -> SessionCheckpoint | None:
        job = self.jobs.get(session_id)
        if job is None:
            return None
        return SessionCheckpoint(job, self.records[session_id], self.current.get(session_id),
                                 self.last_done_s.get(session_id), session_id in self.ended_on_engine)

    def learned(self) -> tuple[Predictor, Policy]:
        """What the cluster learned from every session: the predictor's estimates and the policy's own statistics
        (one pair: the policy reads that predictor)."""
        return self.pred, self.policy

    def restore(self, learned: tuple[Predictor, Policy] | None, sessions: Iterable[SessionCheckpoint]) -> None:
        """Take back what an earlier incarnation of the scheduler stored: its learned estimates (None: keep the
        priors) and its open sessions. A queued segment queues again; a granted one counts on its engine as it did,
        and that engine's reports reconcile it (one whose caller vanished is given up after the usual grace)."""
        if learned is not None:
            self._learn_with(*learned)
        for cp in sessions:
            job, p = cp.job, cp.pending
            sid = job.job_id
            self.jobs[sid], self.records[sid] = job, cp.records
            if cp.last_done_s is not None:
                self.last_done_s[sid] = cp.last_done_s
            if cp.ended_on_engine:
                self.ended_on_engine.add(sid)
            granted = p is not None and p.engine >= 0
            if job.kv is KVState.PRESERVED and not granted and job.engine < len(self.engines):
                self.engines[job.engine].hold(sid, blocks_for(job.kv_tokens, self.bs))
            if p is None:
                continue
            self.pending[p.ticket] = self.current[sid] = p
            if granted:
                self.engines[p.engine].start(p.ticket, *p.slot)
            else:
                self.queued[sid] = p
                self.queue.submit(job)
        waiting = sorted((j for j in self.jobs.values() if j.phase is Phase.TOOL), key=lambda j: j.tool_started_s)
        self.in_tool.update((j.job_id, None) for j in waiting)

    # ------------------------------------------------------------------------------------------ views
    def retry_after_s(self) -> float:
        alive = [e for e in self.engines if e.alive] or self.engines
        return max(1.0, min(e.backlog_s() for e in alive) + sum(
            self.pred.compute_s(j) for j in self.queue.jobs()) / len(alive))

    def queue_by_level(self) -> dict[int, int]:
        return dict(Counter(j.level for j in self.queue.jobs()))

    def _mirror(self, job: Job, prompt_tokens: int, max_tokens: int, tool_category: str, last: bool) -> None:
        """What the policy may know of the job: its past segments' tools, this segment's sizes (max_tokens
        bounds the output; the predictor estimates it online) and whether more may follow."""
        past = job.segments[:job.seg]
        current = Segment(job.seg, prompt_tokens, max_tokens, tool_category, 0.0)
        job.segments = (*past, current) if last else (*past, current, Segment(job.seg + 1, 0, 1, "", 0.0))
        job.seg_generated = 0
