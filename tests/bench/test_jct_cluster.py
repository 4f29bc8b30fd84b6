"""bench.jct_cluster on a small sweep: every arrangement runs, rows and the decision cost are written; a mixed
fleet's slower engines make the same trace's jobs wait longer."""

import json

import pytest

from bench import jct_cluster


def test_cluster_sweep_and_decision_cost(tmp_path):
    out = tmp_path / "c.json"
    assert jct_cluster.main(["--mixes", "bfcl", "--engines", "2", "--jobs-per-engine", "15", "--ready", "300",
                             "--dispatches", "20", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {r["arrangement"] for r in data["rows"]} == set(jct_cluster.ARRANGEMENTS)
    assert all(r["jobs"] == 30 and r["engines"] == 2 for r in data["rows"])
    cost = data["decision_cost"]
    assert cost["ready"] == 300 and cost["dispatches"] == 20 and 0 < cost["p50_ms"] <= cost["p99_ms"]
    md = out.with_suffix(".md").read_text()
    assert "global+astraea" in md and "Decision cost" in md and out.with_suffix(".png").exists()


def test_a_mixed_fleet_is_named_and_slower(tmp_path):
    args = ["--mixes", "bfcl", "--engines", "2", "--jobs-per-engine", "30", "--arrangements", "rr+astraea",
            "--ready", "50", "--dispatches", "5"]
    avg = {}
    for fleet in ("h100", "mixed"):
        out = tmp_path / f"{fleet}.json"
        assert jct_cluster.main([*args, "--fleet", fleet, "--out", str(out)]) == 0
        [row] = json.loads(out.read_text())["rows"]
        avg[fleet] = row["avg_jct_s"]
    assert avg["mixed"] > avg["h100"]
    assert "llama3-8b-h100 + llama3-8b-a100" in (tmp_path / "mixed.md").read_text()


def test_the_no_contention_bound_is_below_every_arrangement_and_named_in_the_verdict(tmp_path):
    """`--bound` runs each job alone on an engine of the fleet's fastest kind: no arrangement of the fleet can
    beat it, and the verdict states it next to the target."""
    from bench import targets

    out = tmp_path / "jct_cluster_mixed.json"
    assert jct_cluster.main(["--mixes", "bfcl", "--engines", "2", "--jobs-per-engine", "20", "--fleet", "mixed",
                             "--arrangements", "ll+astraea,global+astraea", "--bound", "--ready", "50",
                             "--dispatches", "5", "--out", str(out)]) == 0
    rows = {r["arrangement"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows[jct_cluster.BOUND]["avg_jct_s"] < min(r["avg_jct_s"] for r in rows.values()
                                                       if r["arrangement"] != jct_cluster.BOUND)
    [verdict] = [v for v in targets.check_cluster(out)[0] if "bfcl" in v]
    assert "no arrangement can go below" in verdict and "global+astraea" in verdict


def test_a_kv_fleet_differs_only_in_kv_room(tmp_path):
    """`--fleet kv`: every second engine has the same speed and under a third of the KV room (another model shares
    its GPU)."""
    from runtime.agents.costmodel import LLAMA3_8B_H100, LLAMA3_8B_H100_SHARED

    assert LLAMA3_8B_H100_SHARED.cost == LLAMA3_8B_H100.cost
    assert 0 < LLAMA3_8B_H100_SHARED.gpu_blocks < LLAMA3_8B_H100.gpu_blocks / 3
    out = tmp_path / "kv.json"
    assert jct_cluster.main(["--mixes", "bfcl", "--engines", "2", "--jobs-per-engine", "10", "--fleet", "kv",
                             "--arrangements", "rr+astraea", "--ready", "50", "--dispatches", "5",
                             "--out", str(out)]) == 0
    assert "llama3-8b-h100 + llama3-8b-h100-shared" in out.with_suffix(".md").read_text()


def test_the_best_kind_reference_runs_the_global_queue_on_the_fleet_without_its_imbalance(tmp_path, capsys):
    """`--best-kind` runs the global queue with every engine of the fleet's best kind (an H100 with its whole KV
    room, for both imbalanced fleets): its row differs from the imbalanced fleet's, the verdict names it, and a fleet
    of one kind, which has nothing to remove, is refused with the flag named."""
    from bench import targets
    from runtime.agents.costmodel import LLAMA3_8B_H100

    assert jct_cluster.best_kind(jct_cluster.FLEETS["mixed"]) is LLAMA3_8B_H100
    assert jct_cluster.best_kind(jct_cluster.FLEETS["kv"]) is LLAMA3_8B_H100
    out = tmp_path / "jct_cluster_kv.json"
    assert jct_cluster.main(["--mixes", "swe", "--engines", "2", "--jobs-per-engine", "20", "--fleet", "kv",
                             "--arrangements", "ll+astraea,global+astraea", "--best-kind", "--ready", "50",
                             "--dispatches", "5", "--out", str(out)]) == 0
    rows = {r["arrangement"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows[jct_cluster.BEST_KIND]["avg_jct_s"] != rows["global+astraea"]["avg_jct_s"]
    [verdict] = [v for v in targets.check_cluster(out)[0] if "swe" in v]
    assert "with every engine of the fleet's best kind the global queue is" in verdict
    with pytest.raises(SystemExit) as refused:
        jct_cluster.main(["--fleet", "h100", "--best-kind"])
    assert refused.value.code == 2
    assert "--best-kind" in capsys.readouterr().err
