"""InferCept: FCFS by the job's original arrival, and a min-waste KV decision at every interception.

Unlike Astraea there is no watermark: the waste comparison runs even when memory is plentiful, which is what
InferCept does (it minimises memory waste, not latency). Under pressure it re-evaluates paused jobs and gives
up the most wasteful first; swaps compete for the link, whose backlog enters T_swap.
"""

from runtime.agents.job import KVState
from runtime.agents.kv import KVAction, KVDecision, infercept_waste
from runtime.agents.policy.base import Policy


class InferCept(Policy):
    name = "infercept"
    evicts_for_admission = True

    def key(self, job, now):
        return (not job.preempted, job.arrival_s)

    def _waste(self, job, t_int, view):
        return infercept_waste(t_int, job.kv_tokens, view.batch_tokens, self.pred.recompute_s(job.kv_tokens),
                               self.swap_s(job, view), self.profile.kv_bytes_per_token)

    def on_tool_call(self, job, now, view):
        t_int = self.pred.api_s(job.current.api_category)
        return KVDecision(self._waste(job, t_int, view).best(self.swap_ok(job, view)))

    def evict_candidates(self, idle, now, view, forced):
        scored = []
        for j in idle:
            w = self._waste(j, self.remaining_api_s(j, now), view)
            action = w.best(self.swap_ok(j, view))
            if action is KVAction.PRESERVE:
                if not forced:
                    continue
                action = KVAction.SWAP if self.swap_ok(j, view) and w.swap < w.discard else KVAction.DISCARD
            scored.append((w.preserve - min(w.discard, w.swap), j, action))
        scored.sort(key=lambda s: -s[0])
        return [(j, a) for _, j, a in scored if j.kv is KVState.PRESERVED]
