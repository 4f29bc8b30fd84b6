"""Oracle shortest-segment-first: a reference point that knows each segment's true output length."""

from runtime.agents.policy.base import Policy


class Sjf(Policy):
    name = "sjf"
    key_is_static = True
    wait_key_reads = frozenset({"speed"})
    growth_reads = frozenset()

    def wait_key(self, job):
        return self.per_state(job, "sjf_key", self._service_s)

    def _service_s(self, job):
        return self.pred.uncached_prefill_s(job) + job.current.output_tokens * self.pred.priced_decode_s
