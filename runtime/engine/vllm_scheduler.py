"""vLLM scheduler plugin (`SchedulerConfig.scheduler_cls`): the hook through which this runtime sees - and later
steers - every iteration of an unmodified vLLM engine.

It runs inside vLLM's EngineCore process, so it is configured through environment variables, which the spawned
process inherits. `StepLogScheduler` records the step log (what each iteration computed and how long it took),
which `runtime.agents.costmodel.fit` turns into the simulator's cost model; `PolicyScheduler` adds the ordering
of the waiting queue by a `runtime.agents` policy. The override surface is kept to
`schedule` and `update_from_output`, taken as `*args, **kwargs` because their signatures drift between vLLM
releases; the supported version is checked when the class is built.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict

import vllm
from vllm.v1.core.sched.scheduler import Scheduler

from runtime.agents.costmodel import DeploymentProfile, StepCost, StepRecord, kv_bytes_per_token, prefill_pairs
from runtime.agents.job import Job, KVState, Phase, Segment
from runtime.agents.policy import PolicyContext, SegmentStats, make_policy
from runtime.agents.predictor import Predictor
from runtime.engine.job_hints import JobHint, hint_of

SUPPORTED_VLLM = "0.32."
STEP_LOG_ENV = "AGENTRIVER_STEP_LOG"  # JSONL file the plugin appends one StepRecord per iteration to
POLICY_ENV = "AGENTRIVER_POLICY"  # runtime.agents policy name for PolicyScheduler
COST_ENV = "AGENTRIVER_COST"  # JSON of StepCost fields (e.g. fitted from a step log) for the predictor
# Hand-set placeholder for CPU engines (not fitted): only relative service times matter for ordering. Pass a
# cost fitted from the step log (`costmodel.fit`) through AGENTRIVER_COST for real predictions.
CPU_DEFAULT_COST = StepCost(base_s=3e-3, token_s=2e-5, kv_read_s=1e-8, attn_pair_s=1e-10)


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
    """Orders vLLM's waiting queue with a `runtime.agents` policy - the same objects the simulator runs.

    Each request that carries a `JobHint` (see job_hints.py) is mapped to a persistent `Job` mirror, so the job's
    level and accumulated waiting time survive across its segments (separate vLLM requests). Before every
    `schedule()` the waiting deque is re-ordered by `policy.order`; requests without a hint keep vLLM's FCFS order
    behind them. Admission and segment ends are reported back to the policy, as the simulator does.
    vLLM still decides what fits: it stops at the first waiting request that does not (no packing past it).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        name = os.environ.get(POLICY_ENV, "astraea")
        cost = StepCost(**json.loads(os.environ[COST_ENV])) if os.environ.get(COST_ENV) else CPU_DEFAULT_COST
        mc = self.vllm_config.model_config
        kv_bytes = kv_bytes_per_token(mc.get_num_layers(self.vllm_config.parallel_config),
                                      mc.get_num_kv_heads(self.vllm_config.parallel_config), mc.get_head_size(),
                                      mc.dtype.itemsize)
        profile = DeploymentProfile(name="vllm-live", cost=cost, kv_bytes_per_token=kv_bytes,
                                    gpu_kv_tokens=self.cache_config.num_gpu_blocks * self.block_size,
                                    cpu_kv_tokens=0, link_bytes_per_s=10e9, max_model_len=mc.max_model_len,
                                    max_num_seqs=self.scheduler_config.max_num_seqs, block_size=self.block_size)
        self.predictor = Predictor(cost, max_len=mc.max_model_len)
        self.policy = make_policy(name, PolicyContext(self.predictor, profile))
        self.jobs: dict[str, Job] = {}
        self._live: dict[str, tuple[Job, object, float]] = {}  # request id -> (job, request, admitted at)
        self._prefilled: dict[str, int] = {}  # request id -> prompt tokens actually computed (cache misses)

    def add_request(self, request, *args, **kwargs):
        hint = hint_of(request)
        if hint is not None:
            job = self._mirror(hint)
            job.phase, job.ready_since = Phase.READY, time.time()
            self.policy.on_ready(job, job.ready_since)
            self._live[request.request_id] = (job, request, 0.0)
        return super().add_request(request, *args, **kwargs)

    def schedule(self, *args, **kwargs):
        self._reorder()
        out = super().schedule(*args, **kwargs)
        now = time.time()
        for new in out.scheduled_new_reqs:
            entry = self._live.get(new.req_id)
            if entry is not None:
                job, request, _ = entry
                waited = now - job.ready_since
                job.waited_s += waited
                job.phase = Phase.RUNNING
                self.policy.on_admit(job, now, waited)
                self._live[new.req_id] = (job, request, now)
        for req_id, n in out.num_scheduled_tokens.items():
            entry = self._live.get(req_id)
            if entry is not None:
                request = entry[1]
                before = request.num_computed_tokens - n
                if before < request.num_prompt_tokens:
                    computed = min(n, request.num_prompt_tokens - before)
                    self._prefilled[req_id] = self._prefilled.get(req_id, 0) + computed
        return out

    def update_from_output(self, scheduler_output, *args, **kwargs):
        result = super().update_from_output(scheduler_output, *args, **kwargs)
        now = time.time()
        for req_id in list(scheduler_output.num_scheduled_tokens):
            entry = self._live.get(req_id)
            if entry is None or not entry[1].is_finished():
                continue
            job, request, admitted = entry
            del self._live[req_id]
            stats = SegmentStats(now - admitted, self._prefilled.pop(req_id, 0), request.num_output_tokens)
            job.attained_s += stats.service_s
            self.predictor.observe_output(job, stats.output_tokens)
            self.policy.on_segment_done(job, now, stats)
            if job.is_last_segment:
                job.phase = Phase.DONE
                self.predictor.observe_job_done(job)
                del self.jobs[job.job_id]
            else:
                job.phase = Phase.TOOL
        return result

    def _mirror(self, h: JobHint) -> Job:
        job = self.jobs.get(h.job_id)
        if job is None:
            job = self.jobs[h.job_id] = Job(h.job_id, h.arrival_s, ())
        # What the policy may know of the job: its past segments' tools and this segment's sizes.
        past = [Segment(i, 0, 1, h.first_category if i == 0 else "", 0.0) for i in range(h.seg)]
        if h.seg > 0:
            past[-1] = Segment(h.seg - 1, 0, 1, h.prev_category, 0.0)
        current = Segment(h.seg, h.prompt_tokens, h.output_tokens, "", 0.0)
        job.segments = (*past, current) if h.last else (*past, current, Segment(h.seg + 1, 0, 1, "", 0.0))
        job.seg, job.context_tokens, job.seg_generated = h.seg, h.context_tokens, 0
        job.kv, job.kv_tokens = KVState.DISCARDED, 0
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


def read_step_log(path: str | os.PathLike) -> list[StepRecord]:
    with open(path) as f:
        return [StepRecord(**json.loads(line)) for line in f if line.strip()]
