import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime.agents.trace import (
    MIXES,
    SCHEMA,
    TraceError,
    generate,
    jobs_from_table,
    read_trace,
    validate,
    write_trace,
)
from tests.conftest import make_table

GOOD = [
    ("a", 0, 0.5, 100, 10, "search", 1.5),
    ("a", 1, 0.5, 20, 5, "", 0.0),
    ("b", 0, 1.0, 50, 7, "", 0.0),
]


def problems(rows=None, table=None) -> list[str]:
    with pytest.raises(TraceError) as e:
        validate(table if table is not None else make_table(rows))
    return e.value.problems


def test_valid_trace_round_trips(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(make_table(GOOD), path)
    table = read_trace(path)
    assert table.schema == SCHEMA
    jobs = jobs_from_table(table)
    assert [j.job_id for j in jobs] == ["a", "b"]
    assert [s.prompt_tokens for s in jobs[0].segments] == [100, 20]
    assert jobs[0].segments[0].api_category == "search"


def test_rate_scale_divides_arrivals():
    jobs = jobs_from_table(make_table(GOOD), rate_scale=2.0)
    assert [j.arrival_s for j in jobs] == [0.25, 0.5]
    with pytest.raises(ValueError, match="rate_scale"):
        jobs_from_table(make_table(GOOD), rate_scale=0)


def test_missing_and_extra_columns_are_named():
    t = make_table(GOOD).drop_columns(["api_time_s"]).append_column("colour", pa.array(["x"] * 3))
    probs = problems(table=t)
    assert any("'api_time_s': missing" in p for p in probs)
    assert any("'colour': unexpected" in p for p in probs)


def test_wrong_type_is_named():
    t = make_table(GOOD)
    t = t.set_column(3, "prompt_tokens", pa.array(["100", "20", "50"]))
    assert any("'prompt_tokens': type string" in p for p in problems(table=t))


def test_wider_integer_types_are_accepted():
    t = make_table(GOOD)
    t = t.set_column(1, "seg_index", pa.array([0, 1, 0], pa.int64()))
    assert validate(t).schema == SCHEMA


@pytest.mark.parametrize("row,col,value,fragment", [
    (0, 3, -5, "out of range"),
    (0, 2, math.nan, "not a finite non-negative"),
    (0, 6, -1.0, "not a finite non-negative"),
    (1, 4, 0, "at least 1 token"),
    (0, 0, "", "empty job id"),
])
def test_bad_values_name_row_job_and_column(row, col, value, fragment):
    rows = [list(r) for r in GOOD]
    rows[row][col] = value
    if col == 0:  # keep job a consistent otherwise
        rows[1][0] = ""
    probs = problems([tuple(r) for r in rows])
    name = SCHEMA.names[col]
    assert any(f"row {row}" in p and f"column '{name}'" in p and fragment in p for p in probs), probs


def test_null_is_reported():
    t = make_table(GOOD)
    t = t.set_column(4, "output_tokens", pa.array([10, None, 7], pa.int32()))
    assert any("row 1 (job 'a', column 'output_tokens'): null" in p for p in problems(table=t))


def test_non_consecutive_and_duplicate_segments():
    gap = [GOOD[0], ("a", 2, 0.5, 20, 5, "", 0.0), GOOD[2]]
    assert any("column 'seg_index'" in p and "expected 1" in p and "job 'a'" in p for p in problems(gap))
    dup = [GOOD[0], ("a", 0, 0.5, 20, 5, "", 0.0), GOOD[2]]
    assert any("column 'seg_index'" in p for p in problems(dup))


def test_tool_rules_for_last_and_non_last_segments():
    no_tool = [("a", 0, 0.5, 100, 10, "", 1.5), GOOD[1], GOOD[2]]
    assert any("row 0 (job 'a', column 'api_category'): empty" in p for p in problems(no_tool))
    tail_tool = [GOOD[0], ("a", 1, 0.5, 20, 5, "x", 0.0), GOOD[2]]
    assert any("column 'api_category'" in p and "last segment" in p for p in problems(tail_tool))
    tail_time = [GOOD[0], ("a", 1, 0.5, 20, 5, "", 2.0), GOOD[2]]
    assert any("column 'api_time_s'" in p and "last segment" in p for p in problems(tail_time))


def test_arrival_must_match_within_job_and_first_prompt_nonzero():
    rows = [GOOD[0], ("a", 1, 0.7, 20, 5, "", 0.0), ("b", 0, 1.0, 0, 7, "", 0.0)]
    probs = problems(rows)
    assert any("row 1 (job 'a', column 'arrival_s')" in p for p in probs)
    assert any("job 'b', column 'prompt_tokens'" in p and "first segment" in p for p in probs)


def test_empty_and_unreadable_files(tmp_path):
    assert problems(table=make_table([])) == ["trace has no rows"]
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(TraceError, match="not a readable Parquet"):
        read_trace(bad)
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "missing.parquet")


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "t.parquet"
    with pytest.raises(TraceError):
        write_trace(make_table([("a", 0, 0.0, 10, 1, "x", 1.0)]), path)
    assert not path.exists()


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_generators_are_valid_seeded_and_poisson(mix, tmp_path):
    t1 = generate(mix, 200, 4.0, seed=7)
    t2 = generate(mix, 200, 4.0, seed=7)
    assert t1.equals(t2)
    assert not t1.equals(generate(mix, 200, 4.0, seed=8))
    write_trace(t1, tmp_path / "x.parquet")
    jobs = jobs_from_table(read_trace(tmp_path / "x.parquet"))
    assert len(jobs) == 200
    gaps = np.diff([j.arrival_s for j in jobs])
    assert 0.15 < gaps.mean() < 0.35  # mean inter-arrival 1/rate = 0.25 s


def test_infercept_mix_matches_table1_call_times():
    table = generate("infercept", 3000, 10.0, seed=1)
    cats = np.array(table.column("api_category").to_pylist())
    times = np.array(table.column("api_time_s").to_pylist())
    expected = {"math": 9e-5, "qa": 0.69, "alfworld": 0.09, "chatbot": 28.6, "image": 20.03, "tts": 17.24}
    for cat, mean in expected.items():
        assert times[cats == cat].mean() == pytest.approx(mean, rel=0.1), cat


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown mix"):
        generate("nope", 1, 1.0, 0)
    with pytest.raises(ValueError, match="jobs"):
        generate("swe", 0, 1.0, 0)
    with pytest.raises(ValueError, match="rate"):
        generate("swe", 1, 0.0, 0)


def test_pandas_style_file_loads(tmp_path):
    """Other tools write int64/large_string; the loader accepts them and casts to the schema."""
    t = make_table(GOOD)
    ints = ("seg_index", "prompt_tokens", "output_tokens")
    t = pa.table({
        "job_id": pa.array(t.column("job_id").to_pylist(), pa.large_string()),
        **{c: pa.array(t.column(c).to_pylist(), pa.int64()) for c in ints},
        **{c: t.column(c) for c in ("arrival_s", "api_category", "api_time_s")},
    })
    pq.write_table(t, tmp_path / "p.parquet")
    assert read_trace(tmp_path / "p.parquet").schema == SCHEMA


def test_the_mixed_shape_is_bursty_heavy_tailed_and_stops_at_its_window():
    """The shape of our own (no peer's generator makes it): arrivals far burstier than Poisson, turn counts with a
    long tail, and no job past its context window plus one segment (so the 8B profile's 32k limit holds)."""
    jobs = jobs_from_table(generate("mixed", 2000, 1.0, seed=3))
    gaps = np.diff([j.arrival_s for j in jobs])
    assert np.std(gaps) / np.mean(gaps) > 1.4  # Poisson: 1.0
    assert 0.8 < len(jobs) / (jobs[-1].arrival_s * 1.0) < 1.25  # the mean rate is the rate asked for
    turns = np.array([len(j.segments) for j in jobs])
    assert np.percentile(turns, 99) > 4 * np.median(turns)
    contexts = [sum(s.prompt_tokens + s.output_tokens for s in j.segments) for j in jobs]
    assert max(contexts) < 32768
    assert {j.segments[0].api_category for j in jobs if len(j.segments) > 1} >= {"human", "read", "web_search"}
