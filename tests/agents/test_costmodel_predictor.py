import numpy as np
import pytest

from runtime.agents.costmodel import (
    LLAMA3_8B_H100,
    PROFILES,
    StepCost,
    StepRecord,
    fit,
    get_profile,
    prefill_pairs,
)
from runtime.agents.job import Forecast, Job, KVState, Phase, Segment
from runtime.agents.predictor import Predictor

COST = StepCost(base_s=0.006, token_s=3e-5, kv_read_s=5e-8, attn_pair_s=1e-12)


def test_step_cost_is_linear_in_its_features():
    assert COST.step_s(0, 0, 0, 0) == pytest.approx(0.006)
    assert COST.step_s(100, 10, 1000, 500) == pytest.approx(0.006 + 110 * 3e-5 + 1000 * 5e-8 + 500e-12)
    assert prefill_pairs(0, 4) == 10 and prefill_pairs(10, 2) == 23


def test_profiles_have_plausible_h100_numbers():
    p = get_profile("llama3-8b-h100")
    assert 0.005 < p.cost.base_s < 0.009  # ~150 tok/s single stream
    assert p.kv_bytes_per_token == 131072
    assert 300_000 < p.gpu_kv_tokens < 500_000
    assert set(PROFILES) == {"llama3-8b-h100", "llama3-8b-a100", "llama3-8b-h100-shared", "llama3-70b-4xh100"}
    a100 = get_profile("llama3-8b-a100")  # the same model a hardware generation older: slower steps, same KV room
    assert a100.gpu_kv_tokens == p.gpu_kv_tokens
    assert 1.5 < a100.cost.decode_s_per_token(64, 2048) / p.cost.decode_s_per_token(64, 2048) < 2.0
    assert 2.5 < a100.cost.prefill_s(4000) / p.cost.prefill_s(4000) < 3.5
    with pytest.raises(ValueError, match="unknown model profile"):
        get_profile("gpt-9")


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    recs = []
    for _ in range(300):
        p, d = int(rng.integers(0, 4000)), int(rng.integers(0, 200))
        kv = int(rng.integers(0, 200_000))
        pairs = prefill_pairs(int(rng.integers(0, 2000)), p)
        recs.append(StepRecord(p, d, kv, pairs, COST.step_s(p, d, kv, pairs) * rng.normal(1, 0.01)))
    res = fit(recs)
    assert res.cost.base_s == pytest.approx(COST.base_s, rel=0.05)
    assert res.cost.token_s == pytest.approx(COST.token_s, rel=0.05)
    assert res.cost.kv_read_s == pytest.approx(COST.kv_read_s, rel=0.1)
    assert res.mean_abs_pct_error < 0.02


def test_fit_never_goes_negative_and_rejects_tiny_logs():
    recs = [StepRecord(0, d, 0, 0.0, 0.01 + 0.001 * d) for d in range(1, 20)]  # no prefill, no KV exercised
    res = fit(recs)
    assert min(res.cost.base_s, res.cost.token_s, res.cost.kv_read_s, res.cost.attn_pair_s) >= 0
    assert res.cost.token_s == pytest.approx(0.001, rel=1e-6)
    with pytest.raises(ValueError, match="at least 4"):
        fit(recs[:3])


def _job(outputs=(50, 60), cats=("web", ""), times=(2.0, 0.0)) -> Job:
    segs = tuple(Segment(i, 100, o, c, t) for i, (o, c, t) in enumerate(zip(outputs, cats, times, strict=True)))
    return Job("j", 0.0, segs)


def test_prefill_profile_interpolates_the_cost_model():
    pred = Predictor(LLAMA3_8B_H100.cost)
    for n in (16, 1000, 8192, 20000):
        assert pred.prefill_s(n) == pytest.approx(LLAMA3_8B_H100.cost.prefill_s(n), rel=0.02)
    assert pred.prefill_s(100) < pred.prefill_s(1000) < pred.prefill_s(10000)


def test_oracle_and_online_output_estimates():
    job = _job()
    assert Predictor(COST).output_tokens(job) == 50
    online = Predictor(COST, output_estimator="online", output_prior_tokens=77)
    assert online.output_tokens(job) == 77
    online.observe_output(job, 40)
    online.observe_output(job, 60)
    assert online.output_tokens(job) == 50
    job.seg = 1  # keyed by the tool whose output the segment consumes: nothing seen for "web" yet
    assert online.output_tokens(job) == 50  # falls back to the global mean
    with pytest.raises(ValueError, match="output_estimator"):
        Predictor(COST, output_estimator="psychic")


def test_compute_time_uses_only_uncached_tokens():
    pred = Predictor(COST)
    job = _job()
    job.seg, job.context_tokens = 1, 150
    fresh = pred.compute_s(job)
    job.kv, job.kv_tokens = KVState.PRESERVED, 150
    assert pred.compute_s(job) < fresh
    assert pred.uncached_tokens(job) == 100


def test_api_time_is_learned_online_per_category():
    pred = Predictor(COST, api_prior_s=3.0)
    assert pred.api_s("web") == 3.0
    pred.observe_api("web", 1.0)
    pred.observe_api("web", 3.0)
    assert pred.api_s("web") == 2.0
    assert pred.api_s("db") == 2.0  # unseen category: mean of everything seen
    assert pred.api_s("web", elapsed_s=0.5) == 1.5
    assert pred.api_s("web", elapsed_s=5.0) == 5.0  # overdue: expect as long again


def test_remaining_segments_learned_from_finished_jobs_of_the_same_kind():
    pred = Predictor(COST, min_length_samples=2)
    fresh = _job(outputs=(5, 5, 5), cats=("web", "web", ""), times=(1.0, 1.0, 0.0))
    assert pred.remaining_segments(fresh) == 1.0  # nothing learned yet
    for n in (2, 4):
        done = _job(outputs=(5,) * n, cats=("web",) * (n - 1) + ("",), times=(1.0,) * (n - 1) + (0.0,))
        done.seg, done.phase = n - 1, Phase.DONE
        pred.observe_job_done(done)
    assert pred.remaining_segments(fresh) == 3.0  # (2 + 4) / 2 at k = 0
    fresh.seg = 2  # only the 4-segment job got past 2 segments
    assert pred.remaining_segments(fresh) == 2.0
    fresh.seg = 7
    assert pred.remaining_segments(fresh) == 1.0


def test_estimates_kept_per_job_follow_every_change_they_read():
    """T_comp's parts and the expected segment count are kept per job state (the queue is re-priced whenever the
    decode speed moves); each must still follow what the dispatcher and the engine change on a job."""
    pred = Predictor(COST, output_estimator="online", min_length_samples=1)
    job = _job(outputs=(50, 60, 70), cats=("web", "web", ""), times=(1.0, 1.0, 0.0))

    def fresh() -> float:
        return pred.prefill_s(pred.uncached_tokens(job)) + pred.output_tokens(job) * pred.decode_s_per_token

    first = pred.compute_s(job)
    assert first == fresh()
    job.segments = (Segment(0, 900, 50, "web", 1.0), *job.segments[1:])  # the dispatcher learns the real prompt
    assert pred.compute_s(job) == fresh() > first
    job.kv, job.kv_tokens = KVState.PRESERVED, 400
    assert pred.compute_s(job) == fresh()
    pred.observe_output(job, 500)  # the online estimate moves
    assert pred.compute_s(job) == fresh()
    job.forecast = Forecast(output_tokens=3.0, segments_left=9.0)
    assert pred.compute_s(job) == fresh() and pred.remaining_segments(job) == 9.0
    job.forecast = None
    pred.decode_s_per_token *= 2  # the speed is read live, never kept
    assert pred.compute_s(job) == fresh()
    assert pred.remaining_segments(job) == 1.0
    done = _job(outputs=(5,) * 4, cats=("web",) * 3 + ("",), times=(1.0,) * 3 + (0.0,))
    done.seg, done.phase = 3, Phase.DONE
    pred.observe_job_done(done)
    assert pred.remaining_segments(job) == 4.0


def test_a_priced_estimate_moves_with_the_speeds_version_not_with_its_drift():
    """Wait keys are priced at `priced_decode_s`, so that a key an engine computes late in a pass has the value it
    had when the pass began: the live speed drifts at every decode step, the priced one only when it moved 2%."""
    pred = Predictor(COST)
    job = _job(outputs=(50, 60), cats=("web", ""), times=(1.0, 0.0))
    priced, version = pred.priced_compute_s(job), pred.versions["speed"]
    pred.observe_decode_step(pred.decode_s_per_token * 1.1)  # the EWMA moves 0.5%
    assert pred.versions["speed"] == version and pred.priced_compute_s(job) == priced != pred.compute_s(job)
    while pred.versions["speed"] == version:
        pred.observe_decode_step(pred.decode_s_per_token * 1.1)
    assert pred.priced_decode_s == pred.decode_s_per_token
    assert pred.priced_compute_s(job) == pred.compute_s(job) > priced
