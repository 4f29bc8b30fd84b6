"""bench.jct_real end to end on real vLLM (CPU) with the tiny model: unmodified vLLM vs the astraea plugin."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import jct_real

ROOT = Path(__file__).parents[2]


@pytest.mark.service
def test_real_replay_writes_rows_for_each_policy_and_load(tiny_model, tool_trace, tmp_path):
    model, trace = tiny_model, tool_trace
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "bench.jct_real", "--trace", str(trace), "--model", str(model),
                          "--policies", "vllm,astraea", "--rate-scales", "1,2", "--tool-time-scale", "0.5",
                          "--kv-blocks", "40", "--max-model-len", "1024", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads(out.read_text())
    assert {(r["policy"], r["load"]) for r in data["rows"]} == {(p, s) for p in ("vllm", "astraea") for s in (1, 2)}
    for r in data["rows"]:
        assert r["jobs"] == 3 and r["output_tokens"] == 64
        # a's tool wait alone is 0.5 x 0.5 s: no job can finish faster than its own work and waits
        assert r["p99_jct_s"] >= r["avg_jct_s"] > 0
        assert r["sim_avg_jct_s"] > 0 and abs(r["sim_error"]) < 10  # the check ran; its accuracy is the bench's
        # two jobs call one tool each; astraea decides a KV action for each call, vllm has no KV manager
        decided = r["kv_preserve"] + r["kv_swap"] + r["kv_discard"]
        assert decided == (2 if r["policy"] == "astraea" else 0)
    assert data["meta"]["fitted_profile"]["steps"] > 10
    assert "| astraea |" in out.with_suffix(".md").read_text()
    assert Path(str(out.with_suffix("")) + "_jct_vs_load.png").stat().st_size > 1000


def test_bad_arguments(tmp_path, capsys):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    for argv, msg in ((["--trace", "x", "--policies", "vllm,lottery"], "--policies: unknown policy 'lottery'"),
                      (["--trace", "x", "--policies", "clairvoyant"], "'clairvoyant' is a bound"),
                      (["--trace", "x", "--rate-scales", "0"], "scales > 0"),
                      (["--trace", "x", "--model", str(tmp_path)], "run `make model`"),
                      (["--trace", "x", "--model", str(tmp_path / "tiny")], "--kv-blocks is needed")):
        with pytest.raises(SystemExit):
            jct_real.parse_args(argv)
        assert msg in capsys.readouterr().err


def test_replays_of_a_policy_are_averaged_in_the_table():
    def row(policy, seed, avg):
        return {"policy": policy, "load": 4.0, "seed": seed, "jobs": 3, "avg_jct_s": avg, "p50_jct_s": avg,
                "p99_jct_s": 2 * avg, "tokens_per_s": 10.0, "kv_preserve": 0, "kv_swap": 0, "kv_discard": 0,
                "kv_released": 0, "sim_avg_jct_s": 11.0, "sim_error": 11.0 / avg - 1}
    md = jct_real.markdown([row("vllm", 0, 40.0), row("vllm", 1, 60.0), row("astraea", 0, 9.0),
                            row("astraea", 1, 11.0)], "cmd", None)
    assert "| 4 | vllm | 2 | 50.00 | 40.00-60.00 | 100.00 | 1.000 | 11.00 | -78.0% |" in md
    assert "| 4 | astraea | 2 | 10.00 | 9.00-11.00 | 20.00 | 0.200 | 11.00 | +10.0% |" in md
    assert "Mean of each policy's replays" not in jct_real.markdown([row("vllm", 0, 40.0)], "cmd", None)
