"""A job's lifecycle: the one place that moves an agent job between phases.

Three callers see a job from different places - the simulator's engines (`sim.SimulatedEngine`), the cluster's job table
(`runtime.serving.dispatch.Dispatcher`) and the vLLM scheduler plugin (`runtime.engine.vllm_scheduler`) - but a
segment becomes ready, is admitted, is preempted, ends, and hands the job to a tool the same way everywhere: the
job's history (waited time, attained service, MLFQ level) moves, the predictor learns, and the policy's hooks
run in the same order. Written once here, the simulator and the real engine cannot drift apart; the callers keep
only what is theirs (queues, block pools, vLLM requests).

Convention for the segment index: while a job waits on a tool, `job.seg` is the segment that comes after the
call, so the call's category is `job.segments[job.seg - 1].api_category`. The KV decision at a tool call is taken
before that step, with `job.current` the segment that called the tool.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.agents.job import HELD, Job, KVState, Phase
from runtime.agents.kv import KVAction, KVDecision, MemoryView
from runtime.agents.policy import Policy, SegmentStats
from runtime.agents.predictor import Predictor


@dataclass
class Lifecycle:
    policy: Policy
    predictor: Predictor

    def ready(self, job: Job, now: float) -> None:
        """A segment of `job` waits for an engine (arrival, tool return, preemption, retry)."""
        job.phase, job.ready_since = Phase.READY, now
        self.policy.on_ready(job, now)

    def tool_returned(self, job: Job, now: float) -> None:
        """The job's tool call ended: the predictor and the policy learn how long it took (the only moment
        anything learns a call's duration), and the next segment is ready."""
        duration = now - job.tool_started_s
        self.predictor.observe_api(job.segments[job.seg - 1].api_category, duration)
        self.policy.on_tool_return(job, now, duration)
        self.ready(job, now)

    def admit(self, job: Job, now: float) -> float:
        """The segment enters a batch (or, on a cluster, is granted an engine); returns how long it waited."""
        waited = now - job.ready_since
        job.waited_s += waited
        job.phase = Phase.RUNNING
        self.policy.on_admit(job, now, waited)
        return waited

    def preempted(self, job: Job, now: float, service_s: float) -> None:
        """The engine stopped the running segment and dropped its KV (to recompute it later)."""
        job.attained_s += service_s
        job.kv, job.kv_tokens = KVState.DISCARDED, 0
        job.preempted = True
        self.ready(job, now)

    def moved(self, job: Job, engine: int) -> int | None:
        """The job's next segment runs on `engine`. Returns the engine that still holds KV of the job, which must
        now release it (the segment recomputes it where it runs), or None."""
        old = job.engine if job.kv in HELD and job.engine != engine else None
        job.engine = engine
        return old

    def segment_done(self, job: Job, now: float, stats: SegmentStats, view: MemoryView | None = None,
                     asked: str = "") -> KVDecision | None:
        """The current segment ended. Its service and measured token counts enter the history, the predictor
        and the policy (MLFQ demotion or promotion). On the job's last segment the job is done; otherwise it
        calls its tool, and the KV decision for the call is returned when this caller makes it: the caller's
        choice `asked`, else the policy's on `view`. None when the job is done or the decision is made elsewhere
        (the dispatcher learns the engine's through `kv_kept`)."""
        job.attained_s += stats.service_s
        self.predictor.observe_output(job, stats.output_tokens)
        self.policy.on_segment_done(job, now, stats)
        job.context_tokens = job.input_tokens + stats.output_tokens
        job.kv_tokens = job.context_tokens
        job.seg_generated = 0
        if job.is_last_segment:
            self._done(job, now)
            return None
        job.phase, job.tool_started_s = Phase.TOOL, now
        decision = None
        if asked:
            decision = KVDecision(KVAction(asked))
        elif view is not None:
            decision = self.policy.on_tool_call(job, now, view)
        job.seg += 1
        return decision

    @staticmethod
    def withdrawn(job: Job, now: float) -> None:
        """The caller took back a segment that had not ended (its client left): the job waits as on a tool call,
        and the next segment it sends replaces the withdrawn one."""
        job.phase, job.tool_started_s = Phase.TOOL, now

    @staticmethod
    def kv_kept(job: Job, state: KVState, tokens: int) -> None:
        """Where the job's KV now is (set by whoever manages that KV); none is left once it is dropped."""
        job.kv, job.kv_tokens = state, (0 if state in (KVState.NONE, KVState.DISCARDED) else tokens)

    def close(self, job: Job, now: float) -> None:
        """A session ended without its last segment being known as last (closed or idle): the segments it ran are
        all it had, which is what the predictor learns of jobs of its kind."""
        n = job.seg
        if n:
            job.segments, job.seg = job.segments[:n], n - 1
            self._done(job, now)
        else:
            job.phase = Phase.DONE

    def _done(self, job: Job, now: float) -> None:
        job.phase, job.finish_s = Phase.DONE, now
        self.predictor.observe_job_done(job)
