import json

from bench import targets


def _summary(policy, load, avg, p99):
    return {"policy": policy, "estimator": "oracle", "load": load, "avg_jct_s": avg, "p99_jct_s": p99}


def test_reference_load_and_verdicts(tmp_path):
    rows = []
    for load, fcfs in ((1, 10.0), (2, 20.0), (4, 40.0)):
        rows.append(_summary("fcfs", load, fcfs, fcfs * 2))
        rows.append(_summary("infercept", load, fcfs * 0.6, fcfs))
        rows.append(_summary("astraea", load, fcfs * (0.5 if load < 4 else 0.65), fcfs * 1.1))
    path = tmp_path / "jct_sim_x.json"
    path.write_text(json.dumps({"meta": {"command": "cmd"}, "summary": rows}))
    lines, misses = targets.check(path)
    assert lines[0].startswith("reference load 4 (fcfs avg JCT 4.00x")
    assert "PASS astraea avg JCT = 0.650x fcfs" in lines[1]
    assert "PASS astraea p99 JCT = 0.550x fcfs" in lines[2]
    assert any(line.startswith("MISS load 4") for line in lines)  # 26.0 s vs infercept 24.0 s
    assert misses == ["jct_sim_x: load 4: astraea 26.00 s vs best other infercept 24.00 s (1.083x)"]
    assert targets.main([str(path)]) == 0
    assert "infercept 24.00 s" in (tmp_path / "README.md").read_text()
