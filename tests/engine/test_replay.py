import pytest

from runtime.agents.trace import jobs_from_table
from runtime.engine.replay import fit_to_context, prompt_ids
from tests.conftest import make_table


def test_prompt_ids_are_fixed_per_job_and_segment():
    a = prompt_ids("j1", 0, 50, 2000)
    assert a == prompt_ids("j1", 0, 50, 2000) and len(a) == 50
    assert a != prompt_ids("j1", 1, 50, 2000) and a != prompt_ids("j2", 0, 50, 2000)
    assert all(16 <= t < 2000 for t in a)


def test_long_jobs_are_cut_with_a_warning_never_silently():
    table = make_table([("a", 0, 0.0, 300, 50, "t", 1.0), ("a", 1, 0.0, 300, 50, "t", 1.0),
                        ("a", 2, 0.0, 300, 50, "", 0.0), ("b", 0, 0.1, 100, 10, "", 0.0)])
    with pytest.warns(UserWarning, match="1 of 2 jobs cut to fit max_model_len=800"):
        jobs = fit_to_context(jobs_from_table(table), 800)
    a = next(j for j in jobs if j.job_id == "a")
    assert len(a.segments) == 2 and a.segments[-1].api_category == "" and a.segments[-1].api_time_s == 0.0
    with pytest.raises(ValueError, match="first segment alone exceeds"):
        fit_to_context(jobs_from_table(table), 200)
