"""A bound to measure against, not a product policy: it reads the trace's future, which no server can.

`clairvoyant` knows every job's true remaining segments (prompt and output lengths, tool times) and orders ready
segments by the job's true remaining compute, shortest first: shortest-remaining-processing-time over whole
jobs, the order that minimises average completion time on one server when work cannot be overlapped. Its KV
decisions are Astraea's (`AstraeaKV`) fed with the true duration of the tool call and the true output of the
running segment instead of predictions. Where the simulator's tables report it, it marks how far a policy is
from what knowledge of the future would allow; it is not an optimum (batching, memory and the KV fates of
concurrent jobs make the exact optimum intractable), so a real policy may occasionally beat it.

`ClairvoyantConfig` takes parts of that knowledge away, to tell which part of the bound's lead is reachable: with
`true_count` off the bound knows how long a job's later segments are but not how many remain (the predictor's
expected count, as Astraea has it); with `true_kv` off its KV decisions use the predictions Astraea uses.
"""

from dataclasses import dataclass

from runtime.agents.job import Job, KVState, Phase
from runtime.agents.policy.astraea import AstraeaConfig, AstraeaKV
from runtime.agents.policy.base import PolicyContext


@dataclass(frozen=True)
class ClairvoyantConfig:
    true_count: bool = True  # knows how many segments each job has left (else: the predictor's expectation)
    true_kv: bool = True  # KV decisions from true tool durations and outputs (else: Astraea's predictions)


class Clairvoyant(AstraeaKV):
    name = "clairvoyant"
    key_is_static = True

    def __init__(self, ctx: PolicyContext, config: ClairvoyantConfig | None = None):
        super().__init__(ctx, AstraeaConfig().high_watermark)
        self.cfg = config or ClairvoyantConfig()
        self.growth_reads = frozenset() if self.cfg.true_kv else frozenset({"outputs"})
        self.wait_key_reads = frozenset({"speed"}) if self.cfg.true_count else frozenset({"speed", "lengths"})

    def remaining_work_s(self, job: Job) -> float:
        """True compute the job still needs: the rest of this segment (prefill of what is not cached, its remaining
        output), then every later segment's prompt and output (their contexts stay cached in the bound). Its parts
        are kept per job state and priced at the decode speed of the call: after each move of the speed an
        overloaded queue of a thousand is priced again, which was a third of the bound's simulation time when
        each pricing walked the predictor's caches."""
        state = (job.seg, job.context_tokens, job.kv, job.kv_tokens, job.seg_generated)
        parts = job.policy_state.get("clairvoyant_work")
        if parts is None or parts[0] != state:
            left = job.current.output_tokens - job.seg_generated
            parts = job.policy_state["clairvoyant_work"] = (state, self.pred.uncached_prefill_s(job), left,
                                                            *self._later(job))
        _, prefill_s, left, count, later_prefill_s, later_tokens = parts
        dps = self.pred.priced_decode_s
        work = prefill_s + left * dps
        later = later_prefill_s + later_tokens * dps
        if self.cfg.true_count:
            return work + later
        return work + (self.pred.remaining_segments(job) - 1) * (later / count if count else 0.0)

    def _later(self, job: Job) -> tuple[int, float, int]:
        """The segments after the current one: how many, their prompts' prefill seconds, their output tokens.
        Fixed per segment, while the decode speed they are priced at moves: kept per segment, so that pricing a
        waiting job again is a few operations, not a walk over its future."""
        hit = job.policy_state.get("clairvoyant_later")
        if hit is None or hit[0] != job.seg:
            segs = job.segments[job.seg + 1:]
            hit = job.policy_state["clairvoyant_later"] = (
                job.seg, len(segs), sum(self.pred.prefill_s(s.prompt_tokens) for s in segs),
                sum(s.output_tokens for s in segs))
        return hit[1:]

    def wait_key(self, job):
        return (self.remaining_work_s(job), job.arrival_s)

    def tool_s(self, job) -> float:
        return job.current.api_time_s if self.cfg.true_kv else super().tool_s(job)

    def expected_output_tokens(self, job) -> float:
        return job.current.output_tokens if self.cfg.true_kv else super().expected_output_tokens(job)

    def remaining_api_s(self, job, now):
        if not self.cfg.true_kv:
            return super().remaining_api_s(job, now)
        if job.kv is KVState.PRESERVED and job.phase is Phase.TOOL:
            return max(job.segments[job.seg - 1].api_time_s - (now - job.tool_started_s), 0.0)
        return 0.0
