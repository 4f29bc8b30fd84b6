"""bench.control_plane end to end, small: the real GlobalScheduler actor on a local Ray planning for a simulated
fleet (one actor answering for every engine), sessions opened, then a level of callers; the same callers against an
actor that does nothing first."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_scheduler_serves_a_simulated_fleet(tiny_model, tmp_path):
    out = tmp_path / "cp.json"
    res = subprocess.run([sys.executable, "-m", "bench.control_plane", "--model", str(tiny_model), "--engines", "40",
                          "--sessions", "60", "--concurrency", "4", "--duration", "3", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["open_sessions"] == 60  # closed-and-reopened ones included: none lost
    [level] = data["levels"]
    assert level["segments"] > 0 and level["segments_per_s"] > 0
    assert 0 < level["added_ms"]["p50"] <= level["added_ms"]["p99"]
    assert level["journal_writes_per_s"] > 0 and level["journal_write_ms_mean"] > 0
    assert level["engine_calls_per_s"] > 0  # the scheduler watched the simulated engines
    assert level["bare"]["segments"] > 0 and level["bare"]["added_ms"]["p99"] > 0  # the Ray-call ceiling, measured
    assert [t["met"] for t in data["targets"]] and out.with_suffix(".png").exists()
