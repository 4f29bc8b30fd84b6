"""InferCept: FCFS by the job's original arrival, and a min-waste KV decision at every interception.

Unlike Astraea there is no watermark: the waste comparison runs even when memory is plentiful, which is what
InferCept does (it minimises memory waste, not latency). Under pressure it re-evaluates paused jobs and gives
up the most wasteful first; swaps compete for the link, whose backlog enters T_swap.
"""

from runtime.agents.kv import KVDecision, infercept_waste
from runtime.agents.policy.base import Policy


class InferCept(Policy):
    name = "infercept"
    key_is_static = True
    wait_key_reads = growth_reads = frozenset()
    evicts_for_admission = True

    def wait_key(self, job):
        return (not job.preempted, job.arrival_s)

    def _waste(self, job, t_int, view):
        return infercept_waste(t_int, job.kv_tokens, view.batch_tokens, self.pred.recompute_s(job.kv_tokens),
                               self.swap_s(job, view), self.profile.kv_bytes_per_token)

    def on_tool_call(self, job, now, view):
        t_int = self.pred.api_s(job.current.api_category)
        return KVDecision(self._waste(job, t_int, view).best(self.swap_ok(job, view)))

    def evict_candidates(self, idle, now, view, forced):
        return self.rank_by_waste(idle, now, view, forced, self._waste)
