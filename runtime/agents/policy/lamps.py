"""LAMPS (arXiv 2410.18248; NeurIPS'25 as MARS): requests ranked by the memory they hold over time.

Size-based order (SJF) misleads when requests call APIs: a short request that keeps a long context through a
long call holds more memory than a longer one that gives it up. LAMPS therefore predicts, before scheduling, how a
request's KV will be handled during its API call (the option of least memory waste, InferCept's formula) and
ranks requests by the memory x time of their whole life with that handling, smallest first; requests that wait too
long are served first (starvation prevention).

Here a "request" is a job's current segment and the tool call that follows it (a job's next segment is ranked
when it becomes ready). Its score, in token-seconds, is
  prefill:  context x predicted prefill time of what is not cached,
  decode:   n x (context + n / 2) x decode time per token, for its n predicted output tokens,
  the call: (context + n) x the time the KV is held for it under the handling that holds it least: the predicted
            API time if preserved, two transfers if swapped, the recompute if discarded (the memory re-occupied
            while it is recomputed).
Simplifications, each because the paper's input does not exist here: output lengths come from the shared
predictor (LAMPS runs OPT-125m on the prompt, and traces carry no prompts); API times are per category, as in
LAMPS; its selective score update (re-ranking only some requests per step) is a speed optimisation the simulator
does not need (scores are cached per job state); the ranking predicts the handling by the request's own memory
(the batch it will share memory with is not known when it is ranked), while the decision at the call itself is
InferCept's min-waste on live memory, as LAMPS decides it.
"""

from dataclasses import dataclass
from operator import attrgetter

from runtime.agents.policy.base import PolicyContext
from runtime.agents.policy.infercept import InferCept
from runtime.agents.predictor import ESTIMATES

_by_age = attrgetter("ready_since", "arrival_s")
_by_arrival = attrgetter("arrival_s")


@dataclass(frozen=True)
class LampsConfig:
    starvation_s: float = 30.0  # a segment ready this long goes before every ranked one, oldest first

    def __post_init__(self):
        if self.starvation_s <= 0:
            raise ValueError(f"starvation_s must be > 0, got {self.starvation_s}")


class Lamps(InferCept):
    """InferCept's KV decisions (min-waste at the call, most wasteful pins given up first), LAMPS's order."""

    name = "lamps"
    key_is_static = False  # starvation: a waiting segment's rank changes with time
    packs = True
    evicts_for_admission = True
    wait_key_reads = ESTIMATES  # not InferCept's: the memory-time score reads every estimate
    growth_reads = frozenset({"outputs"})

    def __init__(self, ctx: PolicyContext, config: LampsConfig | None = None):
        super().__init__(ctx)
        self.cfg = config or LampsConfig()

    def memory_time(self, job) -> float:
        """Predicted token-seconds of KV the job's current segment and its tool call hold (the ranking score)."""
        return self.per_state(job, "lamps_memory_time", self._memory_time)

    def _memory_time(self, job) -> float:
        context = job.resume_tokens
        n = max(self.pred.output_tokens(job) - job.seg_generated, 0.0)
        score = context * self.pred.uncached_prefill_s(job)
        score += n * (context + n / 2) * self.pred.decode_s_per_token
        if not job.is_last_segment:
            held = int(context + n)
            score += held * min(self.pred.api_s(job.current.api_category), 2 * self.profile.swap_s(held),
                                self.pred.recompute_s(held))
        return score

    def wait_key(self, job):
        return self.memory_time(job)

    def rank(self, job, now, wait_key):
        if now - job.ready_since >= self.cfg.starvation_s:  # starving: oldest first, before every ranked one
            return (False, job.ready_since, job.arrival_s)
        return (True, wait_key(job), job.arrival_s)

    def order(self, ready, now, wait_key=None):
        # `rank`'s order, sorted in two parts: the starving (often most of an overloaded queue) by attributes
        # alone, the rest by score; each sort is stable, so ties keep `ready`'s order as one sort by `rank` does.
        wk = wait_key or self.wait_key
        starve = self.cfg.starvation_s
        starving, ranked = [], []
        for job in ready:
            (starving if now - job.ready_since >= starve else ranked).append(job)  # as `rank` tests it
        starving.sort(key=_by_age)
        ranked.sort(key=_by_arrival)  # then by score: two stable sorts, by (score, arrival) without a Python key
        ranked.sort(key=wk)
        return starving + ranked

    def growth_tokens(self, job):
        return max(int(round(self.pred.output_tokens(job))) - job.seg_generated, 0)
