"""Service-time predictor (Astraea §4.2).

T_comp = f_prefill(n_in) + n_gen * decode latency per token, with f_prefill interpolated from a profile table
and n_gen either the segment oracle (the trace's true length of this segment only) or an online per-context
estimate. API time is learned online per tool category from calls that have finished: the predictor never
sees a call's duration before the call is over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.agents.costmodel import StepCost
from runtime.agents.job import Job, KVState, Phase

OUTPUT_ESTIMATORS = ("oracle", "online")
# The learned estimates T_comp reads, each versioned on its own (`Predictor.versions`) so that a cache of values
# that read only some of them outlives changes to the others.
ESTIMATES = frozenset({"speed", "outputs", "lengths"})


@dataclass
class RunningMean:
    n: int = 0
    mean: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.mean += (x - self.mean) / self.n


@dataclass
class Predictor:
    cost: StepCost
    output_estimator: str = "oracle"
    api_prior_s: float = 1.0  # before any call of any category has finished
    output_prior_tokens: float = 128.0
    max_len: int = 131072
    ref_batch: int = 64  # decode latency per token is taken at this batch and context until observed
    ref_context: int = 2048
    _table_x: np.ndarray = field(init=False, repr=False)
    _table_y: np.ndarray = field(init=False, repr=False)
    decode_s_per_token: float = field(init=False)
    _api: dict[str, RunningMean] = field(default_factory=dict, init=False, repr=False)
    _api_all: RunningMean = field(default_factory=RunningMean, init=False, repr=False)
    _out: dict[str, RunningMean] = field(default_factory=dict, init=False, repr=False)
    _out_all: RunningMean = field(default_factory=RunningMean, init=False, repr=False)
    _prefill_cache: dict[int, float] = field(default_factory=dict, init=False, repr=False)
    _job_lengths: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)
    _remaining: dict[str, list[float]] = field(default_factory=dict, init=False, repr=False)
    # Bumped whenever an estimate that T_comp depends on moves (per estimate in `versions`), so callers may cache
    # per job state.
    version: int = field(default=0, init=False)
    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ESTIMATES, 0), init=False)
    _dps_at_version: float = field(default=0.0, init=False, repr=False)
    min_length_samples: int = 20  # finished jobs of a kind before its own length distribution is used

    def __post_init__(self) -> None:
        if self.output_estimator not in OUTPUT_ESTIMATORS:
            raise ValueError(f"output_estimator must be one of {OUTPUT_ESTIMATORS}, got '{self.output_estimator}'")
        # Profile table: prefill time at geometrically spaced lengths, as one would measure offline.
        xs = np.unique(np.concatenate([[0, 1], np.geomspace(16, self.max_len, 48).astype(int)]))
        self._table_x = xs.astype(float)
        self._table_y = np.array([self.cost.prefill_s(int(n)) for n in xs])
        self.decode_s_per_token = self.cost.decode_s_per_token(self.ref_batch, self.ref_context)
        self._dps_at_version = self.decode_s_per_token

    # ----------------------------------------------------------------------------------- compute time
    def prefill_s(self, tokens: int) -> float:
        t = self._prefill_cache.get(tokens)
        if t is None:
            t = self._prefill_cache[tokens] = float(np.interp(tokens, self._table_x, self._table_y))
        return t

    def output_tokens(self, job: Job) -> float:
        if job.forecast is not None and job.forecast.output_tokens is not None:
            return job.forecast.output_tokens
        if self.output_estimator == "oracle":
            return float(job.current.output_tokens)
        est = self._out.get(self._out_key(job))
        if est is not None and est.n > 0:
            return est.mean
        return self._out_all.mean if self._out_all.n else self.output_prior_tokens

    def uncached_tokens(self, job: Job) -> int:
        """Input tokens that must be prefilled, from what the scheduler knows of the job's KV."""
        if job.kv in (KVState.PRESERVED, KVState.ACTIVE, KVState.SWAPPED, KVState.SWAPPING_OUT,
                      KVState.SWAPPING_IN):
            return max(job.input_tokens - job.kv_tokens, 0)
        return job.input_tokens

    def compute_s(self, job: Job) -> float:
        """T_comp of the job's current segment."""
        prefill_s, output_tokens = self._segment_parts(job)
        return prefill_s + output_tokens * self.decode_s_per_token

    @property
    def priced_decode_s(self) -> float:
        """The decode speed as of its last version move. The live estimate drifts at every decode step, its version
        only when it has moved 2%: a value priced at this one and kept per version (an engine keeps each waiting
        job's wait key) is the same whenever it is computed, so an engine may compute it as late as a pass needs it
        (runtime.agents.queue_order)."""
        return self._dps_at_version

    def priced_compute_s(self, job: Job) -> float:
        """T_comp at `priced_decode_s`."""
        prefill_s, output_tokens = self._segment_parts(job)
        return prefill_s + output_tokens * self._dps_at_version

    def uncached_prefill_s(self, job: Job) -> float:
        """Prefill seconds of the current segment's input that is not cached (kept per job state)."""
        return self._segment_parts(job)[0]

    def _segment_parts(self, job: Job) -> tuple[float, float]:
        """T_comp's parts that do not read the decode speed: the prefill seconds of the input not cached and the
        expected output tokens, kept per job state. The speed moves every few hundred engine steps, and each move
        prices every waiting job again; in an overloaded queue of hundreds that repricing was about a quarter of the
        simulator's time (profiled: astraea, SWE at 8x) when it walked each job's state."""
        key = (job.seg, job.context_tokens, job.kv, job.kv_tokens, job.segments, job.forecast, self.versions["outputs"])
        hit = job.policy_state.get("predictor_segment_parts")
        if hit is not None and hit[0] == key:
            return hit[1]
        parts = (self.prefill_s(self.uncached_tokens(job)), self.output_tokens(job))
        job.policy_state["predictor_segment_parts"] = (key, parts)
        return parts

    def recompute_s(self, tokens: int) -> float:
        return self.prefill_s(tokens)

    # ----------------------------------------------------------------------------------- job length
    def remaining_segments(self, job: Job) -> float:
        """Expected segments left including the current one, E[N - k | N > k], from finished jobs of the same
        kind (the category of the job's first tool call, known once its first segment has run)."""
        if job.forecast is not None and job.forecast.segments_left is not None:
            return job.forecast.segments_left
        memo_key = (job.seg, job.phase, job.segments, self.versions["lengths"])  # what the lookup below reads
        hit = job.policy_state.get("predictor_remaining_segments")
        if hit is not None and hit[0] == memo_key:
            return hit[1]
        value = self._remaining_segments(job)
        job.policy_state["predictor_remaining_segments"] = (memo_key, value)
        return value

    def _remaining_segments(self, job: Job) -> float:
        key = self._job_key(job)
        if len(self._job_lengths.get(key, ())) < self.min_length_samples:
            key = "*"
        table = self._remaining.get(key)
        if table is None:
            table = self._remaining[key] = _mean_residual(self._job_lengths.get(key, []))
        return table[job.seg] if job.seg < len(table) else 1.0

    def observe_job_done(self, job: Job) -> None:
        self._moved("lengths")
        n = len(job.segments)
        for key in (self._job_key(job), "*"):
            self._job_lengths.setdefault(key, []).append(n)
            self._remaining.pop(key, None)

    @staticmethod
    def _job_key(job: Job) -> str:
        return job.segments[0].api_category if job.seg > 0 or job.phase is Phase.DONE else "*"

    # ----------------------------------------------------------------------------------- API time
    def api_s(self, category: str, elapsed_s: float = 0.0) -> float:
        """Predicted remaining duration of a call of `category` that has run for `elapsed_s`."""
        est = self._api.get(category)
        if est is not None and est.n > 0:
            mean = est.mean
        elif self._api_all.n > 0:
            mean = self._api_all.mean
        else:
            mean = self.api_prior_s
        # Past its mean a call is expected to last as long again as it has already run (InferCept's rule
        # for calls of unknown length), which keeps long-tailed calls from being predicted as ending now.
        return mean - elapsed_s if elapsed_s < mean else elapsed_s

    # ----------------------------------------------------------------------------------- observations
    def observe_api(self, category: str, duration_s: float) -> None:
        self._api.setdefault(category, RunningMean()).add(duration_s)
        self._api_all.add(duration_s)

    def observe_output(self, job: Job, tokens: int) -> None:
        if self.output_estimator == "online":
            self._moved("outputs")
        self._out.setdefault(self._out_key(job), RunningMean()).add(tokens)
        self._out_all.add(tokens)

    def observe_decode_step(self, step_s: float) -> None:
        """Track the live decode latency per token (an EWMA of decode-iteration time)."""
        self.decode_s_per_token += 0.05 * (step_s - self.decode_s_per_token)
        if abs(self.decode_s_per_token - self._dps_at_version) > 0.02 * self._dps_at_version:
            self._dps_at_version = self.decode_s_per_token
            self._moved("speed")

    def _moved(self, estimate: str) -> None:
        self.versions[estimate] += 1
        self.version += 1

    def versions_of(self, estimates: frozenset[str]) -> tuple[int, ...]:
        """The versions of `estimates` (a value computed from only those stays valid while this does not move)."""
        return tuple(self.versions[e] for e in sorted(estimates))

    @staticmethod
    def _out_key(job: Job) -> str:
        # A segment's length is best predicted by what fed it: the tool whose output it consumes.
        return job.segments[job.seg - 1].api_category if job.seg > 0 else ""


def _mean_residual(lengths: list[int]) -> list[float]:
    """table[k] = mean of (n - k) over lengths n > k: expected segments left once k have finished."""
    if not lengths:
        return []
    counts = np.bincount(np.asarray(lengths))
    n = np.arange(len(counts))
    table = []
    for k in range(len(counts)):
        c = counts[k + 1:]
        total = c.sum()
        table.append(float((c * (n[k + 1:] - k)).sum() / total) if total else 1.0)
    return table
