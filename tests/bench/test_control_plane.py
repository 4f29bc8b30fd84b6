"""bench.control_plane end to end, small: the real GlobalScheduler actor on a local Ray planning for a simulated
fleet (one actor answering for every engine), sessions opened, then a level of callers; the same callers against an
actor that does nothing first; then the same with the scheduler split in two shards, each planning for its own
engines and serving the sessions that hash to it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)

ROOT = Path(__file__).parents[2]


def test_the_scheduler_serves_a_simulated_fleet(tiny_model, tmp_path):
    out = tmp_path / "cp.json"
    res = subprocess.run([sys.executable, "-m", "bench.control_plane", "--model", str(tiny_model), "--engines", "40",
                          "--sessions", "60", "--concurrency", "16", "--rates", "40", "--duration", "3",
                          "--shards", "1,2", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads(out.read_text())
    assert [run["shards"] for run in data["shard_runs"]] == [1, 2]
    for run in data["shard_runs"]:
        assert run["open_sessions"] == 60  # closed-and-reopened ones included: none lost
        if run["shards"] == 2:  # each shard holds its own sessions, none twice
            assert len(run["sessions_by_shard"]) == 2 and min(run["sessions_by_shard"]) > 0
        [level] = run["levels"]
        for transport in ("coalesced", "one_call_each"):
            got = level[transport]
            assert got["segments"] > 0 and got["segments_per_s"] > 0
            assert 0 < got["added_ms"]["p50"] <= got["added_ms"]["p99"]
            assert got["journal_writes_per_s"] > 0 and got["journal_write_ms_mean"] > 0
            assert got["engine_calls_per_s"] > 0  # the scheduler watched the simulated engines
            assert got["scheduler_cpu_ms_per_segment"] > 0 and got["scheduler_cores"] > 0
            bare = level["bare"][transport]
            assert bare["segments"] > 0 and bare["added_ms"]["p99"] > 0  # the Ray-call ceiling, measured
        assert level["one_call_each"]["calls_per_remote_call"] == 1.0
        assert level["coalesced"]["calls_per_remote_call"] > 1.0  # 16 callers: calls went together
        [offered] = run["offered"]  # an open loop at 40 segments/s: served at about that rate, latency measured
        assert offered["offered_per_s"] == 40 and offered["no_session"] == 0 and offered["segments"] > 0
        assert 0.5 * 40 < offered["segments_per_s"] < 2 * 40
        assert 0 < offered["added_ms"]["p50"] <= offered["added_ms"]["p99"]
    assert [t["met"] for t in data["targets"]] and out.with_suffix(".png").exists()
    assert "## 2 scheduler shard(s)" in out.with_suffix(".md").read_text()
