"""bench.sim_speed on a short trace: one timed run per (workload, policy), the target judged per run, the files
written, and a malformed workload refused by name."""

import json

import pytest

from bench import sim_speed, targets


def test_each_policy_is_timed_and_judged(tmp_path):
    out = tmp_path / "speed.json"
    assert sim_speed.main(["--workloads", "bfcl:2.5:4,swe:0.5:2", "--jobs", "30", "--policies", "fcfs,astraea",
                           "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["mix"], r["policy"]) for r in data["timings"]] == [("bfcl", "fcfs"), ("bfcl", "astraea"),
                                                               ("swe", "fcfs"), ("swe", "astraea")]
    assert all(r["jobs"] == 30 and r["wall_s"] > 0 and r["cpu_s"] > 0 and r["avg_jct_s"] > 0 for r in data["timings"])
    assert [t["met"] for t in data["targets"]] == [r["wall_s"] <= sim_speed.TARGET_S for r in data["timings"]]
    lines, _ = targets.check_sim_speed(out)
    assert len(lines) == 4 and all(line.startswith(("PASS", "MISS")) for line in lines)
    assert "| swe | 0.5 | 2 | 30 | astraea |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").exists()


@pytest.mark.parametrize("bad, field", [("nope:1:1", "unknown mix"), ("swe:x:1", "not mix:rate:load"),
                                        ("swe:1:0", "must be > 0"), ("swe:1:2:3", "not mix:rate:load"),
                                        ("swe:1", "not mix:rate:load")])
def test_a_malformed_workload_is_refused(bad, field, capsys):
    with pytest.raises(SystemExit):
        sim_speed.main(["--workloads", bad])
    assert field in capsys.readouterr().err
