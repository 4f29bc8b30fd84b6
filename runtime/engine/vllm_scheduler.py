"""vLLM scheduler plugin (`SchedulerConfig.scheduler_cls`): the hook through which this runtime sees - and later
steers - every iteration of an unmodified vLLM engine.

It runs inside vLLM's EngineCore process, so it is configured through environment variables, which the spawned
process inherits. `StepLogScheduler` records the step log (what each iteration computed and how long it took),
which `runtime.agents.costmodel.fit` turns into the simulator's cost model; `PolicyScheduler` adds the ordering
of the waiting queue and the KV decisions at tool calls by a `runtime.agents` policy.

Override surface (all taken as `*args, **kwargs`, as signatures drift between vLLM releases): the public
`schedule`, `update_from_output`, `add_request`, and two private hooks of vLLM's `Scheduler` - `_free_request`
(a request ended: the segment's bookkeeping and KV decision) and `_free_blocks` (where a pin keeps the blocks).
The private two are what a version bump most likely breaks; the supported version is checked when the class is
built, and tests/engine exercise every hook on a real engine.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict

import vllm
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from runtime.agents.costmodel import (
    CPU_DEFAULT_COST,
    DeploymentProfile,
    StepCost,
    StepRecord,
    kv_bytes_per_token,
    prefill_pairs,
)
from runtime.agents.job import Job, KVState, Phase, Segment
from runtime.agents.kv import KVAction, KVDecision, MemoryView, blocks_for
from runtime.agents.policy import PolicyContext, SegmentStats, make_policy
from runtime.agents.predictor import Predictor
from runtime.engine.host_swap import HostSwapConnector
from runtime.engine.job_hints import JobHint, hint_of

SUPPORTED_VLLM = "0.32."
STEP_LOG_ENV = "AGENTRIVER_STEP_LOG"  # JSONL file the plugin appends one StepRecord per iteration to
POLICY_ENV = "AGENTRIVER_POLICY"  # runtime.agents policy name for PolicyScheduler
COST_ENV = "AGENTRIVER_COST"  # JSON of StepCost fields (e.g. fitted from a step log) for the predictor
KV_LOG_ENV = "AGENTRIVER_KV_LOG"  # JSONL file of KV events (decisions, releases, resumes with reused tokens)
HOST_COPY_BYTES_PER_S = 10e9  # assumed device<->host copy rate for swap costs (PCIe-class; not measured here)


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


class PolicyScheduler(StepLogScheduler):
    """Orders vLLM's waiting queue and manages KV across tool calls with a `runtime.agents` policy - the same
    objects the simulator runs.

    Each request that carries a `JobHint` (see job_hints.py) is mapped to a persistent `Job` mirror, so the job's
    level, waited time and KV state survive across its segments (separate vLLM requests). Before every
    `schedule()` the waiting deque is re-ordered by `policy.order`; requests without a hint keep vLLM's FCFS order
    behind them. vLLM still decides what fits: it stops at the first waiting request that does not.

    When a segment ends before a tool call, `policy.on_tool_call` decides on live memory (free blocks read from
    vLLM's block pool) what happens to the job's KV:
    - PRESERVE: the finished request's blocks are not freed (a pin). The next segment's request finds them through
      vLLM's prefix cache; the pin is dropped once that request is scheduled. When waiting work does not fit or a
      running request was preempted, pins are released in the policy's eviction order (`evict_candidates`).
    - SWAP: `HostSwapConnector` copies the blocks to host memory and frees them; the next segment loads them back.
    - DISCARD: blocks are freed to the LRU prefix cache, as unmodified vLLM does.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        name = os.environ.get(POLICY_ENV, "astraea")
        cost = StepCost(**json.loads(os.environ[COST_ENV])) if os.environ.get(COST_ENV) else CPU_DEFAULT_COST
        self._swap = self.connector if isinstance(self.connector, HostSwapConnector) else None
        mc = self.vllm_config.model_config
        kv_bytes = kv_bytes_per_token(mc.get_num_layers(self.vllm_config.parallel_config),
                                      mc.get_num_kv_heads(self.vllm_config.parallel_config), mc.get_head_size(),
                                      mc.dtype.itemsize)
        host_tokens = self._swap.host_blocks * self.block_size if self._swap else 0
        profile = DeploymentProfile(name="vllm-live", cost=cost, kv_bytes_per_token=kv_bytes,
                                    gpu_kv_tokens=self.cache_config.num_gpu_blocks * self.block_size,
                                    cpu_kv_tokens=host_tokens, link_bytes_per_s=HOST_COPY_BYTES_PER_S,
                                    max_model_len=mc.max_model_len,
                                    max_num_seqs=self.scheduler_config.max_num_seqs, block_size=self.block_size)
        self.predictor = Predictor(cost, max_len=mc.max_model_len)
        self.policy = make_policy(name, PolicyContext(self.predictor, profile))
        self.jobs: dict[str, Job] = {}
        self._live: dict[str, tuple[Job, object, float]] = {}  # request id -> (job, request, admitted at)
        self._prefilled: dict[str, int] = {}  # request id -> prompt tokens actually computed (cache misses)
        self._pin_on_free: dict[str, tuple[Job, float | None]] = {}  # request id -> (job, pin expiry)
        self._pinned: dict[str, tuple[object, float | None]] = {}  # job id -> (finished request, expiry)
        self._asked: dict[str, str] = {}  # job id -> KV action its caller asked for at this segment's tool call
        path = os.environ.get(KV_LOG_ENV)
        self._kv_log = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives with the engine

    # ------------------------------------------------------------------------------------------ requests
    def add_request(self, request, *args, **kwargs):
        hint = hint_of(request)
        if hint is not None:
            job = self._mirror(hint)
            if hint.kv_action:
                self._asked[job.job_id] = hint.kv_action
            now = time.time()
            if job.phase is Phase.TOOL:
                duration = now - job.tool_started_s
                self.predictor.observe_api(job.segments[job.seg - 1].api_category, duration)
                self.policy.on_tool_return(job, now, duration)
            job.phase, job.ready_since = Phase.READY, now
            self.policy.on_ready(job, now)
            self._live[request.request_id] = (job, request, 0.0)
        return super().add_request(request, *args, **kwargs)

    def schedule(self, *args, **kwargs):
        now = time.time()
        self._expire_pins(now)
        self._reorder()
        out = super().schedule(*args, **kwargs)
        for new in out.scheduled_new_reqs:
            entry = self._live.get(new.req_id)
            if entry is not None:
                self._admitted(new.req_id, entry, out.num_scheduled_tokens[new.req_id], now)
        for req_id, n in out.num_scheduled_tokens.items():
            entry = self._live.get(req_id)
            if entry is not None:
                request = entry[1]
                before = request.num_computed_tokens - n
                if before < request.num_prompt_tokens:
                    computed = min(n, request.num_prompt_tokens - before)
                    self._prefilled[req_id] = self._prefilled.get(req_id, 0) + computed
        if self._pinned and (out.preempted_req_ids or self._head_blocked()):
            self._relieve_pressure(now)
        return out

    def _admitted(self, req_id: str, entry, scheduled: int, now: float) -> None:
        job, request, _ = entry
        waited = now - job.ready_since
        job.waited_s += waited
        job.phase = Phase.RUNNING
        self.policy.on_admit(job, now, waited)
        self._live[req_id] = (job, request, now)
        if job.seg > 0:
            reused = request.num_computed_tokens - scheduled
            host = self._swap.loaded_tokens.pop(req_id, 0) if self._swap else 0
            self._log(job, "resume", reused, f"from_{job.kv.value}", host_tokens=host)
        self._unpin(job.job_id)  # the new request holds the blocks it reused now
        if self._swap:
            self._swap.drop(job.job_id)  # a host copy it did not need (its prefix was still cached) is stale
        job.kv, job.kv_tokens = KVState.ACTIVE, request.num_computed_tokens

    def _free_request(self, request, *args, **kwargs):
        entry = self._live.pop(request.request_id, None)
        if entry is not None:
            self._segment_done(entry, request)
        return super()._free_request(request, *args, **kwargs)

    def _free_blocks(self, request, *args, **kwargs):
        pin = self._pin_on_free.pop(request.request_id, None)
        if pin is None:
            return super()._free_blocks(request, *args, **kwargs)
        job, expiry = pin
        self._pinned[job.job_id] = (request, expiry)
        del self.requests[request.request_id]  # finished for vLLM; only this plugin still holds its blocks
        return None

    def _segment_done(self, entry, request) -> None:
        job, _, admitted = entry
        now = time.time()
        stats = SegmentStats(now - admitted, self._prefilled.pop(request.request_id, 0), request.num_output_tokens)
        job.attained_s += stats.service_s
        self.predictor.observe_output(job, stats.output_tokens)
        self.policy.on_segment_done(job, now, stats)
        job.context_tokens = request.num_tokens
        if request.status == RequestStatus.FINISHED_ABORTED:  # its caller gave up: the job may come back
            self._forget(job)
            return
        if job.is_last_segment:
            job.phase = Phase.DONE
            self.predictor.observe_job_done(job)
            self._forget(job)
            return
        job.phase, job.tool_started_s = Phase.TOOL, now
        job.kv_tokens = request.num_computed_tokens
        asked = self._asked.pop(job.job_id, "")
        decision = KVDecision(KVAction(asked)) if asked else self.policy.on_tool_call(job, now, self._view())
        action = decision.action
        if action is KVAction.SWAP and not self._swap_fits(job):
            action = KVAction.DISCARD
        if action is KVAction.PRESERVE:
            expiry = now + decision.ttl_s if decision.ttl_s is not None else None
            self._pin_on_free[request.request_id] = (job, expiry)
            job.kv = KVState.PRESERVED
        elif action is KVAction.SWAP:
            self._swap.swap_out(request.request_id, job.job_id)
            job.kv = KVState.SWAPPED
        else:
            job.kv = KVState.DISCARDED
        self._log(job, action.value, job.kv_tokens, "tool_call")

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
        head_job = self._live[head.request_id][0].job_id if head is not None and head.request_id in self._live else ""
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
                self._release(self.jobs[job_id], KVAction.DISCARD, "ttl")

    def _release(self, job: Job, action: KVAction, cause: str) -> int:
        """Give up a pinned job's blocks (swap or discard); returns how many blocks that frees."""
        request, _ = self._pinned.pop(job.job_id)
        blocks = self.kv_cache_manager.get_block_ids(request.request_id)[0]
        if action is KVAction.SWAP and self._swap_fits(job) and self._swap.store_blocks(request, blocks, job.job_id):
            self.requests[request.request_id] = request  # vLLM frees it when the worker reports the copy done
            job.kv = KVState.SWAPPED
        else:
            action = KVAction.DISCARD
            self.kv_cache_manager.free(request)
            job.kv, job.kv_tokens = KVState.DISCARDED, 0
        self._log(job, action.value, request.num_computed_tokens, cause)
        return len(blocks)

    def _forget(self, job: Job) -> None:
        """Release everything held for the job here (pin, host copy, mirror)."""
        job.kv, job.kv_tokens = KVState.NONE, 0
        self._unpin(job.job_id)
        if self._swap:
            self._swap.drop(job.job_id)
        self._asked.pop(job.job_id, None)
        self.jobs.pop(job.job_id, None)

    def _unpin(self, job_id: str) -> None:
        pinned = self._pinned.pop(job_id, None)
        if pinned is not None:
            self.kv_cache_manager.free(pinned[0])

    def _log(self, job: Job, event: str, tokens: int, cause: str, **extra) -> None:
        if self._kv_log is not None:
            rec = {"t": time.time(), "job": job.job_id, "seg": job.seg, "event": event, "tokens": tokens,
                   "cause": cause, **extra}
            self._kv_log.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------------------------------ ordering
    def _mirror(self, h: JobHint) -> Job:
        job = self.jobs.get(h.job_id)
        if job is not None and h.seg == 0:  # a new job under a closed job's id: nothing of the old one carries over
            self._forget(job)
            job = None
        if job is None:
            job = self.jobs[h.job_id] = Job(h.job_id, h.arrival_s, ())
        # What the policy may know of the job: its past segments' tools and this segment's sizes.
        past = [Segment(i, 0, 1, h.first_category if i == 0 else "", 0.0) for i in range(h.seg)]
        if h.seg > 0:
            past[-1] = Segment(h.seg - 1, 0, 1, h.prev_category, 0.0)
        current = Segment(h.seg, h.prompt_tokens, h.output_tokens, h.tool_category, 0.0)
        job.segments = (*past, current) if h.last else (*past, current, Segment(h.seg + 1, 0, 1, "", 0.0))
        job.seg, job.context_tokens, job.seg_generated = h.seg, h.context_tokens, 0
        return job

    def _reorder(self) -> None:
        if self.policy.name == "fcfs" or not isinstance(self.waiting, deque) or len(self.waiting) < 2:
            return
        hinted = [r for r in self.waiting if r.request_id in self._live]
        if len(hinted) < 2:
            return
        by_job = {id(self._live[r.request_id][0]): r for r in hinted}
        ordered = [by_job[id(j)] for j in self.policy.order([self._live[r.request_id][0] for r in hinted], time.time())]
        rest = [r for r in self.waiting if r.request_id not in self._live]
        self.waiting.clear()
        self.waiting.extend(ordered + rest)

    def shutdown(self) -> None:
        if self._kv_log is not None:
            self._kv_log.close()
            self._kv_log = None
        super().shutdown()


def read_step_log(path: str | os.PathLike) -> list[StepRecord]:
    with open(path) as f:
        return [StepRecord(**json.loads(line)) for line in f if line.strip()]
