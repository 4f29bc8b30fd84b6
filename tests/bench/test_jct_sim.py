import json

import pytest

from bench import jct_sim
from runtime.agents.metrics import ROW_FIELDS
from runtime.agents.trace import write_trace
from tests.conftest import make_table


def test_sweep_writes_rows_table_and_plots(tmp_path):
    out = tmp_path / "res.json"
    rc = jct_sim.main(["--mix", "bfcl", "--jobs", "30", "--rate", "3", "--policies", "fcfs,astraea",
                       "--policy-config", "astraea.high_watermark=0.8",
                       "--rate-scales", "1,4", "--seeds", "0,1", "--output-estimator", "oracle,online",
                       "--workers", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 * 2 * 2 * 2
    for row in data["rows"]:
        assert set(ROW_FIELDS) <= set(row)
        assert row["jobs"] == 30 and row["avg_jct_s"] > 0
        assert row["p50_jct_s"] <= row["p90_jct_s"] <= row["p99_jct_s"]
        assert row["policy_config"] == ({"high_watermark": "0.8"} if row["policy"] == "astraea" else {})
        # the excess over each job's time alone is what the policy controls: part of the JCT, never below zero
        # on average (a job cannot finish sooner among others than alone on an idle engine)
        assert 0 <= row["avg_excess_s"] < row["avg_jct_s"] and row["p99_excess_s"] <= row["p99_jct_s"]
    fcfs = [a for a in data["summary"] if a["policy"] == "fcfs"]
    assert all(a["avg_vs_fcfs"] == pytest.approx(1.0) for a in fcfs)
    assert "| astraea |" in out.with_suffix(".md").read_text()
    assert (tmp_path / "res_jct_vs_load.png").stat().st_size > 1000
    assert (tmp_path / "res_cdf.png").stat().st_size > 1000


def test_sweeps_of_different_mixes_in_one_process_each_replay_their_own_trace(tmp_path):
    """`bench.reproduce` runs every mix in one process: a trace kept from the first sweep must not be replayed by
    the next (it once was: the committed bfcl table then showed the infercept mix's JCTs)."""
    def avg_jct(mix):
        out = tmp_path / f"{mix}.json"
        assert jct_sim.main(["--mix", mix, "--jobs", "20", "--rate", "2", "--policies", "fcfs", "--rate-scales", "1",
                             "--seeds", "0", "--workers", "1", "--out", str(out)]) == 0
        return json.loads(out.read_text())["rows"][0]["avg_jct_s"]

    first = avg_jct("infercept")
    assert avg_jct("bfcl") != first
    assert avg_jct("infercept") == first


def test_any_trace_in_the_schema_works_including_unknown_categories(tmp_path):
    rows = [("x", 0, 0.0, 300, 20, "quantum_oracle", 2.0), ("x", 1, 0.0, 50, 10, "teleport", 0.3),
            ("x", 2, 0.0, 40, 5, "", 0.0), ("y", 0, 0.4, 100, 30, "", 0.0)]
    trace = tmp_path / "t.parquet"
    write_trace(make_table(rows), trace)
    out = tmp_path / "r.json"
    assert jct_sim.main(["--trace", str(trace), "--rate-scales", "0.5,1,2", "--workers", "1",
                         "--out", str(out)]) == 0
    rows_out = json.loads(out.read_text())["rows"]
    assert {r["policy"] for r in rows_out} == set(jct_sim.POLICIES)


@pytest.mark.parametrize("argv,msg", [
    (["--mix", "swe", "--policies", "fcfs,lifo"], "unknown ['lifo']"),
    (["--mix", "swe", "--rate-scales", "1,-2"], "must be > 0"),
    (["--mix", "swe", "--rate-scales", "a"], "cannot parse"),
    (["--mix", "swe", "--output-estimator", "crystal"], "unknown ['crystal']"),
    ([], "give --trace FILE or --mix NAME"),
    (["--mix", "swe", "--policy-config", "astraea.bogus=1"], "no field 'bogus'"),
    (["--mix", "swe", "--policy-config", "astraea=1"], "expected POLICY.FIELD=VALUE"),
])
def test_bad_arguments_are_named(argv, msg, capsys):
    with pytest.raises(SystemExit):
        jct_sim.parse_args(argv)
    assert msg in capsys.readouterr().err
