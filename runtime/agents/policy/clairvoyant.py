"""A bound to measure against, not a product policy: it reads the trace's future, which no server can.

`clairvoyant` knows every job's true remaining segments (prompt and output lengths, tool times) and orders ready
segments by the job's true remaining compute, shortest first: shortest-remaining-processing-time over whole
jobs, the order that minimises average completion time on one server when work cannot be overlapped. Its KV
decisions are Astraea's waste comparison fed with the true duration of the tool call and the true output of the
running segment instead of predictions. Where the simulator's tables report it, it marks how far a policy is
from what knowledge of the future would allow; it is not an optimum (batching, memory and the KV fates of
concurrent jobs make the exact optimum intractable), so a real policy may occasionally beat it.
"""

from runtime.agents.job import Job, KVState, Phase
from runtime.agents.kv import KVDecision
from runtime.agents.policy.astraea import Astraea


class Clairvoyant(Astraea):
    name = "clairvoyant"

    def remaining_work_s(self, job: Job) -> float:
        """True compute the job still needs: the rest of this segment (prefill of what is not cached, its remaining
        output), then every later segment's prompt and output (their contexts stay cached in the bound)."""
        return self.per_state(job, "clairvoyant_work", self._remaining_work_s)

    def _remaining_work_s(self, job: Job) -> float:
        dps = self.pred.decode_s_per_token
        left = job.current.output_tokens - job.seg_generated
        work = self.pred.prefill_s(self.pred.uncached_tokens(job)) + left * dps
        for seg in job.segments[job.seg + 1:]:
            work += self.pred.prefill_s(seg.prompt_tokens) + seg.output_tokens * dps
        return work

    def order(self, ready, now):
        return sorted(ready, key=lambda j: self.key(j, now))

    def key(self, job, now):
        return (self.remaining_work_s(job), job.arrival_s)

    def growth_tokens(self, job):
        return max(job.current.output_tokens - job.seg_generated, 0)

    def on_tool_call(self, job, now, view):
        action = self.kv.decide(view, t_api=job.current.api_time_s, c_self=job.kv_tokens,
                                t_recompute=self.pred.recompute_s(job.kv_tokens), t_swap=self.swap_s(job, view),
                                bytes_per_token=self.profile.kv_bytes_per_token)
        return KVDecision(action)

    def remaining_api_s(self, job, now):
        if job.kv is KVState.PRESERVED and job.phase is Phase.TOOL:
            return max(job.segments[job.seg - 1].api_time_s - (now - job.tool_started_s), 0.0)
        return 0.0
