"""vLLM scheduler plugin (`SchedulerConfig.scheduler_cls`): the hook through which this runtime sees - and later
steers - every iteration of an unmodified vLLM engine.

It runs inside vLLM's EngineCore process, so it is configured through environment variables, which the spawned
process inherits. Jobs come from `JobHint`s (the Ray runtime) or, in the stock OpenAI server, from vLLM's own
`session_id` (drop-in mode, sessions.py). `StepLogScheduler` records the step log (what each iteration computed
and how long it took), which `runtime.agents.costmodel.fit` turns into the simulator's cost model;
`PolicyScheduler` adds the ordering of the waiting queue and the KV decisions at tool calls by a `runtime.agents`
policy.

Override surface (all taken as `*args, **kwargs`, as signatures drift between vLLM releases): the public
`schedule`, `update_from_output`, `add_request`, `finish_requests`, and two private hooks of vLLM's `Scheduler` -
`_free_request` (a request ended: the segment's bookkeeping and KV decision) and `_free_blocks` (where a pin keeps
the blocks). The private two are what a version bump most likely breaks; the supported version is checked when the
class is built, and tests/engine exercise every hook on a real engine.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass

import vllm
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from runtime.agents.costmodel import (
    CPU_DEFAULT_COST,
    HOST_COPY_BYTES_PER_S,
    DeploymentProfile,
    StepCost,
    StepRecord,
    kv_bytes_per_token,
    prefill_pairs,
)
from runtime.agents.job import Forecast, Job, KVState, Phase, Segment
from runtime.agents.kv import KVAction, MemoryView, blocks_for
from runtime.agents.lifecycle import Lifecycle
from runtime.agents.policy import PolicyContext, SegmentStats, check_servable, make_policy
from runtime.agents.predictor import Predictor
from runtime.engine.host_swap import HostSwapConnector
from runtime.engine.job_hints import OUTCOME_KEY, JobHint, hint_of
from runtime.engine.sessions import SessionHints, call_args

SUPPORTED_VLLM = "0.32."
STEP_LOG_ENV = "AGENTRIVER_STEP_LOG"  # JSONL file the plugin appends one StepRecord per iteration to
POLICY_ENV = "AGENTRIVER_POLICY"  # runtime.agents policy name for PolicyScheduler
COST_ENV = "AGENTRIVER_COST"  # JSON of StepCost fields (e.g. fitted from a step log) for the predictor
KV_LOG_ENV = "AGENTRIVER_KV_LOG"  # JSONL file of KV events (decisions, releases, resumes with reused tokens)
RELEASE_PREFIX = "agentriver-release:"  # request ids that, aborted, end a job's state here (release_request_id)


def check_vllm_version(version: str = vllm.__version__) -> None:
    if not version.startswith(SUPPORTED_VLLM):
        raise RuntimeError(f"agentriver's vLLM scheduler plugin supports vLLM {SUPPORTED_VLLM}x, found {version}; "
                           f"install the project's pinned extra (`pip install -e .[cpu]` or `.[gpu]`)")


class StepLogScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        check_vllm_version()
        super().__init__(*args, **kwargs)
        path = os.environ.get(STEP_LOG_ENV)
        self._step_log = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives with the engine
        self._step_started = 0.0
        self._pending: dict | None = None

    def schedule(self, *args, **kwargs):
        self._step_started = time.perf_counter()
        out = super().schedule(*args, **kwargs)
        if self._step_log is not None and out.total_num_scheduled_tokens:
            self._pending = self._describe(out)
        return out

    def update_from_output(self, *args, **kwargs):
        result = super().update_from_output(*args, **kwargs)
        if self._pending is not None:
            rec = StepRecord(**self._pending, wall_s=time.perf_counter() - self._step_started)
            self._step_log.write(json.dumps(asdict(rec)) + "\n")
            self._pending = None
        return result

    def _describe(self, out) -> dict:
        """Split the scheduled tokens into prefill chunks and decode steps (vLLM has already advanced
        num_computed_tokens by the scheduled amount when schedule() returns)."""
        prefill = decode = kv_read = 0
        pairs = 0.0
        for req_id, n in out.num_scheduled_tokens.items():
            req = self.requests.get(req_id)
            if req is None:
                continue
            before = req.num_computed_tokens - n
            if before >= req.num_prompt_tokens and n == 1:
                decode += 1
                kv_read += before
            else:
                prefill += n
                pairs += prefill_pairs(before, n)
        return {"prefill_tokens": prefill, "decode_seqs": decode, "kv_tokens_read": kv_read, "attn_pairs": pairs}

    def shutdown(self) -> None:
        if self._step_log is not None:
            self._step_log.close()
            self._step_log = None
        super().shutdown()


def engine_profile(vllm_config, num_blocks: int, host_blocks: int, cost: StepCost) -> DeploymentProfile:
    """The deployment profile of a live engine - its real KV geometry and limits - for the plugin's policy and for
    the cluster scheduler the engine reports to (both plan with the same numbers)."""
    mc, pc, sc = vllm_config.model_config, vllm_config.parallel_config, vllm_config.scheduler_config
    block_size = vllm_config.cache_config.block_size
    return DeploymentProfile(name="vllm-live", cost=cost,
                             kv_bytes_per_token=kv_bytes_per_token(mc.get_num_layers(pc), mc.get_num_kv_heads(pc),
                                                                   mc.get_head_size(), mc.dtype.itemsize),
                             gpu_kv_tokens=num_blocks * block_size, cpu_kv_tokens=host_blocks * block_size,
                             link_bytes_per_s=HOST_COPY_BYTES_PER_S, max_model_len=mc.max_model_len,
                             max_num_seqs=sc.max_num_seqs, max_batched_tokens=sc.max_num_batched_tokens,
                             block_size=block_size)


def step_cost() -> StepCost:
    """The step cost this engine predicts with (AGENTRIVER_COST, e.g. fitted from a step log; else the default)."""
    return StepCost(**json.loads(os.environ[COST_ENV])) if os.environ.get(COST_ENV) else CPU_DEFAULT_COST


def release_request_id(job_id: str, arrival_s: float) -> str:
    """The pseudo request id that, aborted, tells the plugin a job has ended: vLLM passes abort ids to the
    scheduler's `finish_requests` unchecked, which makes aborts a channel into the engine core that needs no
    change to vLLM. The job's arrival names the incarnation, so a late release cannot hit a new job of that id."""
    return RELEASE_PREFIX + json.dumps([job_id, arrival_s])


class PolicyScheduler(StepLogScheduler):
    """Orders vLLM's waiting queue and manages KV across tool calls with a `runtime.agents` policy - the same
    objects the simulator runs, moved through the same `Lifecycle`.

    Each request that carries a `JobHint` (see job_hints.py) is mapped to a `Job` mirror that takes the job's
    cluster-wide history (MLFQ level, waited time, attained service, tools) and forecast from the hint, so a job
    keeps its place whichever engine runs its segment. Before every `schedule()` the waiting deque is re-ordered by
    `policy.order`; requests without a hint keep vLLM's FCFS order behind them. vLLM still decides what fits: it
    stops at the first waiting request that does not.

    When a segment ends before a tool call, the policy decides on live memory (free blocks read from vLLM's block
    pool) what happens to the job's KV:
    - PRESERVE: the finished request's blocks are not freed (a pin). The next segment's request finds them through
      vLLM's prefix cache; the pin is dropped once that request is scheduled. When waiting work does not fit or a
      running request was preempted, pins are released in the policy's eviction order (`evict_candidates`).
    - SWAP: `HostSwapConnector` copies the blocks to host memory and frees them; the next segment loads them back.
    - DISCARD: blocks are freed to the LRU prefix cache, as unmodified vLLM does.
    The outcome (`SegmentOutcome`) returns with the request's last output, in vLLM's `kv_transfer_params`. What the
    plugin changes later on its own (pressure, TTLs) and what it releases goes to the KV log. A job's state here is
    dropped when its last segment ends, when its request is aborted, and when the cluster says the job ended or
    moved (`release_request_id`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._swap = self.connector if isinstance(self.connector, HostSwapConnector) else None
        profile = engine_profile(self.vllm_config, self.cache_config.num_gpu_blocks,
                                 self._swap.host_blocks if self._swap else 0, step_cost())
        self.predictor = Predictor(profile.cost, output_estimator="online", max_len=profile.max_model_len)
        name = os.environ.get(POLICY_ENV, "astraea")
        try:
            check_servable(name)
        except ValueError as e:
            raise ValueError(f"{POLICY_ENV}: {e}") from None
        self.policy = make_policy(name, PolicyContext(self.predictor, profile))
        self.life = Lifecycle(self.policy, self.predictor)
        self.jobs: dict[str, Job] = {}
        self._live: dict[str, _Live] = {}  # request id -> its job's segment in this engine
        self._pin_on_free: dict[str, tuple[Job, float | None]] = {}  # request id -> (job, pin expiry)
        self._pinned: dict[str, tuple[object, float | None]] = {}  # job id -> (finished request, expiry)
        self._asked: dict[str, str] = {}  # job id -> KV action its caller asked for at this segment's tool call
        self._sessions = SessionHints()  # drop-in mode: jobs from the stock server's session ids (sessions.py)
        path = os.environ.get(KV_LOG_ENV)
        self._kv_log = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives with the engine

    # ------------------------------------------------------------------------------------------ requests
    def add_request(self, request, *args, **kwargs):
        now = time.time()
        hint = hint_of(request) or self._session_hint(request, now)
        if hint is not None:
            job = self._mirror(hint)
            if hint.kv_action:
                self._asked[job.job_id] = hint.kv_action
            if job.phase is Phase.TOOL:
                self.life.tool_returned(job, now)
            else:
                self.life.ready(job, now)
            self._live[request.request_id] = _Live(job, request)
            if self._swap:
                self._swap.expect(request.request_id, job.job_id)
        return super().add_request(request, *args, **kwargs)

    def _session_hint(self, request, now: float) -> JobHint | None:
        """Drop-in mode: the hint of a call the stock server sent with a `session_id` (None without one, and for a
        call of a session whose previous call is still running here: that one is scheduled as a plain request)."""
        session_id = getattr(request, "session_id", None)
        if not session_id or any(live.job.job_id == session_id for live in self._live.values()):
            return None
        params = request.sampling_params
        return self._sessions.hint(session_id, request.num_prompt_tokens, request.max_tokens or 1,
                                   call_args(params.extra_args if params is not None else None), now)

    def finish_requests(self, request_ids, finished_status):
        if request_ids is None:
            return super().finish_requests(request_ids, finished_status)
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        rest = [i for i in ids if not i.startswith(RELEASE_PREFIX)]
        for marker in (i for i in ids if i.startswith(RELEASE_PREFIX)):
            self._release_job(*json.loads(marker[len(RELEASE_PREFIX):]))
        return super().finish_requests(rest, finished_status) if rest else []

    def _release_job(self, job_id: str, arrival_s: float) -> None:
        """The cluster says the job ended or moved: drop what is held for it, unless a segment of it (or of a newer
        job of that id) is in this engine now."""
        job = self.jobs.get(job_id)
        if job is None or job.arrival_s != arrival_s or any(live.job is job for live in self._live.values()):
            return
        self._forget(job, "released")

    def schedule(self, *args, **kwargs):
        now = time.time()
        self._expire_pins(now)
        if self._sessions:  # drop-in sessions only: the Ray runtime's jobs are released by the cluster
            for session_id in self._sessions.expired(now, {live.job.job_id for live in self._live.values()}):
                if session_id in self.jobs:
                    self._forget(self.jobs[session_id], "expired")
        self._reorder()
        out = super().schedule(*args, **kwargs)
        for new in out.scheduled_new_reqs:
            live = self._live.get(new.req_id)
            if live is not None:
                self._admitted(new.req_id, live, out.num_scheduled_tokens[new.req_id], now)
        for req_id, n in out.num_scheduled_tokens.items():
            live = self._live.get(req_id)
            if live is not None:
                before = live.request.num_computed_tokens - n
                if before < live.request.num_prompt_tokens:
                    live.prefilled += min(n, live.request.num_prompt_tokens - before)
        if self._pinned and (out.preempted_req_ids or self._head_blocked()):
            self._relieve_pressure(now)
        return out

    def _admitted(self, req_id: str, live: _Live, scheduled: int, now: float) -> None:
        job, request = live.job, live.request
        live.queued_s += self.life.admit(job, now)
        live.admitted_at = now
        kept = job.kv
        self._unpin(job.job_id)  # the new request holds the blocks it reused now
        if self._swap:
            self._swap.drop(job.job_id)  # a host copy it did not need (its prefix was still cached) is stale
        self.life.kv_kept(job, KVState.ACTIVE, request.num_computed_tokens)
        if job.seg > 0:
            reused = request.num_computed_tokens - scheduled
            host = self._swap.loaded_tokens.pop(req_id, 0) if self._swap else 0
            self._log(job, "resume", reused, f"from_{kept.value}", host_tokens=host)

    def _free_request(self, request, *args, **kwargs):
        live = self._live.pop(request.request_id, None)
        outcome = self._segment_done(live, request) if live is not None else None
        kv_params, ec_params = super()._free_request(request, *args, **kwargs)
        if outcome is not None:
            kv_params = {**(kv_params or {}), OUTCOME_KEY: outcome}
        return kv_params, ec_params

    def _free_blocks(self, request, *args, **kwargs):
        pin = self._pin_on_free.pop(request.request_id, None)
        if pin is None:
            return super()._free_blocks(request, *args, **kwargs)
        job, expiry = pin
        self._pinned[job.job_id] = (request, expiry)
        del self.requests[request.request_id]  # finished for vLLM; only this plugin still holds its blocks
        return None

    def _segment_done(self, live: _Live, request) -> dict | None:
        """The segment's request ended: move the job on and return its outcome (None when it was aborted: its
        caller gave up, and nothing of the segment is learned)."""
        job = live.job
        if request.status == RequestStatus.FINISHED_ABORTED:
            self._forget(job, "aborted")
            return None
        now = time.time()
        stats = SegmentStats(now - live.admitted_at, live.prefilled, request.num_output_tokens)
        decision = self.life.segment_done(job, now, stats, self._view(), self._asked.pop(job.job_id, ""))
        self._sessions.ended(job.job_id, request.num_tokens, now)
        outcome = {"service_s": stats.service_s, "queued_s": live.queued_s, "prefill_tokens": live.prefilled}
        if decision is None:  # its last segment: nothing stays here
            self._forget(job, "job_done")
            return {**outcome, "kv_state": KVState.NONE.value, "kv_tokens": 0}
        action = decision.action
        if action is KVAction.SWAP and not self._swap_fits(job):
            action = KVAction.DISCARD
        if action is KVAction.PRESERVE:
            expiry = now + decision.ttl_s if decision.ttl_s is not None else None
            self._pin_on_free[request.request_id] = (job, expiry)
            self.life.kv_kept(job, KVState.PRESERVED, request.num_computed_tokens)
        elif action is KVAction.SWAP:
            self._swap.swap_out(request.request_id, job.job_id)
            self.life.kv_kept(job, KVState.SWAPPED, request.num_computed_tokens)
        else:
            self.life.kv_kept(job, KVState.DISCARDED, 0)
        self._log(job, action.value, request.num_computed_tokens, "tool_call")
        return {**outcome, "kv_state": job.kv.value, "kv_tokens": job.kv_tokens}

    # ------------------------------------------------------------------------------------------ KV
    def _view(self) -> MemoryView:
        total = self.kv_cache_manager.block_pool.num_gpu_blocks
        return MemoryView(total, total - self.kv_cache_manager.block_pool.get_num_free_blocks(),
                          self._swap.free_host_blocks if self._swap else 0, self.block_size,
                          sum(r.num_computed_tokens for r in self.running), 0.0)

    def _swap_fits(self, job: Job) -> bool:
        return self._swap is not None and self._swap.free_host_blocks >= job.kv_tokens // self.block_size > 0

    def _head_blocked(self) -> bool:
        """The first waiting request was left waiting for want of free blocks."""
        if not self.waiting:
            return False
        head = next(iter(self.waiting))
        return self.kv_cache_manager.block_pool.get_num_free_blocks() < blocks_for(head.num_tokens + 1,
                                                                                    self.block_size)

    def _relieve_pressure(self, now: float) -> None:
        """Release pins in the policy's eviction order until the head of the queue and one new block per running
        request fit. The head's own pin is kept: its blocks are what it will reuse."""
        head = next(iter(self.waiting), None)
        head_job = self._live[head.request_id].job.job_id if head is not None and head.request_id in self._live else ""
        need = len(self.running) + (blocks_for(head.num_tokens + 1, self.block_size) if head is not None else 0)
        idle = [self.jobs[j] for j in self._pinned if j != head_job]
        freed = self.kv_cache_manager.block_pool.get_num_free_blocks()
        for job, action in self.policy.evict_candidates(idle, now, self._view(), True):
            if freed >= need:
                break
            freed += self._release(job, action, "pressure")

    def _expire_pins(self, now: float) -> None:
        for job_id, (_, expiry) in list(self._pinned.items()):
            if expiry is not None and now >= expiry:
                job = self.jobs[job_id]
                self._release(job, self.policy.on_pin_expired(job, now, self._view()), "ttl")

    def _release(self, job: Job, action: KVAction, cause: str) -> int:
        """Give up a pinned job's blocks (swap or discard); returns how many blocks that frees."""
        request, _ = self._pinned.pop(job.job_id)
        blocks = self.kv_cache_manager.get_block_ids(request.request_id)[0]
        if action is KVAction.SWAP and self._swap_fits(job) and self._swap.store_blocks(request, blocks, job.job_id):
            self.requests[request.request_id] = request  # vLLM frees it when the worker reports the copy done
            self.life.kv_kept(job, KVState.SWAPPED, job.kv_tokens)
        else:
            action = KVAction.DISCARD
            self.kv_cache_manager.free(request)
            self.life.kv_kept(job, KVState.DISCARDED, 0)
        self._log(job, action.value, request.num_computed_tokens, cause)
        return len(blocks)

    def _forget(self, job: Job, cause: str) -> None:
        """Release everything held for the job here (pin, host copy, mirror)."""
        self._unpin(job.job_id)
        if self._swap:
            self._swap.drop(job.job_id)
        self._asked.pop(job.job_id, None)
        self._sessions.forget(job.job_id, job.arrival_s)
        self.jobs.pop(job.job_id, None)
        self.life.kv_kept(job, KVState.NONE, 0)
        self._log(job, "end", 0, cause)

    def _unpin(self, job_id: str) -> None:
        pinned = self._pinned.pop(job_id, None)
        if pinned is not None:
            self.kv_cache_manager.free(pinned[0])

    def holdings(self) -> dict:
        """What this engine holds for jobs between their segments (the cluster's operators' view)."""
        pinning = [r for r, _ in self._pinned.values()] + [self.requests[i] for i in self._pin_on_free
                                                            if i in self.requests]  # pinned once freed
        pinned = sum(len(self.kv_cache_manager.get_block_ids(r.request_id)[0]) for r in pinning)
        host = self._swap.host_blocks - self._swap.free_host_blocks if self._swap else 0
        return {"jobs": len(self.jobs), "pinned_blocks": pinned, "host_swap_blocks": host}

    def _log(self, job: Job, event: str, tokens: int, cause: str, **extra) -> None:
        if self._kv_log is not None:
            seg = job.seg - 1 if job.phase is Phase.TOOL else job.seg  # during a tool call: the segment that called it
            rec = {"t": time.time(), "job": job.job_id, "seg": seg, "event": event, "tokens": tokens,
                   "cause": cause, "holdings": self.holdings(), **extra}
            self._kv_log.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------------------------------ ordering
    def _mirror(self, h: JobHint) -> Job:
        """The job as the cluster describes it: history and forecast from the hint, this segment's sizes."""
        job = self.jobs.get(h.job_id)
        if job is not None and (h.seg == 0 or job.arrival_s != h.arrival_s):  # a new job under an old id
            self._forget(job, "replaced")
            job = None
        if job is None:
            job = self.jobs[h.job_id] = Job(h.job_id, h.arrival_s, ())
        tools = (*h.tools, *[""] * (h.seg - len(h.tools)))
        past = [Segment(i, 0, 1, tool, 0.0) for i, tool in enumerate(tools)]
        current = Segment(h.seg, h.prompt_tokens, h.output_tokens, h.tool_category, 0.0)
        job.segments = (*past, current) if h.last else (*past, current, Segment(h.seg + 1, 0, 1, "", 0.0))
        job.seg, job.context_tokens, job.seg_generated = h.seg, h.context_tokens, 0
        for name in ("level", "waited_s", "attained_s"):  # the cluster's history, where a cluster sent it
            if getattr(h, name) is not None:
                setattr(job, name, getattr(h, name))
        job.forecast = Forecast(h.forecast_output_tokens, h.forecast_segments)
        return job

    def _reorder(self) -> None:
        """Put the waiting requests in the policy's order. Skipped when vLLM will admit none of them this step (every
        slot is taken): the order cannot matter then, and hundreds of calls may wait. Its effect on the no-tool
        run of bench.vs_vllm_server is within that run's spread (docs/ARCHITECTURE.md)."""
        if self.policy.name == "fcfs" or not isinstance(self.waiting, deque) or len(self.waiting) < 2:
            return
        if len(self.running) + self.num_waiting_for_streaming_input >= self.max_num_active_reqs:
            return
        hinted = [r for r in self.waiting if r.request_id in self._live]
        if len(hinted) < 2:
            return
        by_job = {id(self._live[r.request_id].job): r for r in hinted}
        jobs = [self._live[r.request_id].job for r in hinted]
        ordered = [by_job[id(j)] for j in self.policy.order(jobs, time.time())]
        rest = [r for r in self.waiting if r.request_id not in self._live]
        self.waiting.clear()
        self.waiting.extend(ordered + rest)

    def shutdown(self) -> None:
        if self._kv_log is not None:
            self._kv_log.close()
            self._kv_log = None
        super().shutdown()


@dataclass(eq=False)
class _Live:
    """A hinted request in this engine: the job it is a segment of and what it measured so far."""

    job: Job
    request: object
    admitted_at: float = 0.0
    queued_s: float = 0.0
    prefilled: int = 0  # prompt tokens actually computed (cache misses)


def read_step_log(path: str | os.PathLike) -> list[StepRecord]:
    with open(path) as f:
        return [StepRecord(**json.loads(line)) for line in f if line.strip()]
