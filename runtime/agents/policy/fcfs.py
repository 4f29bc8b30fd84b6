"""vLLM's default: every segment is a new request served first come first served; preempted requests go back
to the front. KV of a finished segment goes to the LRU prefix cache (the base policy's DISCARD)."""

from runtime.agents.policy.base import Policy


class Fcfs(Policy):
    name = "fcfs"
    key_is_static = True
    wait_key_reads = growth_reads = frozenset()

    def wait_key(self, job):
        return (not job.preempted, job.ready_since)
