"""bench.service_load end to end, small: the served app on a local Ray with the tiny model under the `vllm` baseline
(unmodified vLLM engines behind a FCFS global queue: the shared service runs astraea), a sweep past the queue bound
(so some calls are refused), then the new session after the sweep."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.service


def test_sweep_past_the_queue_bound_holds_without_5xx(tiny_model, tmp_path):
    out = tmp_path / "load.json"
    res = subprocess.run([sys.executable, "-m", "bench.service_load", "--model", str(tiny_model), "--policy", "vllm",
                          "--max-queue", "4",
                          "--concurrency", "2,16", "--duration", "8", "--max-tokens", "8", "--max-num-seqs", "4",
                          "--max-model-len", "1024", "--port", "8766", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["meta"]["policy"] == "vllm"
    assert [r["clients"] for r in data["levels"]] == [2, 16]
    for r in data["levels"]:
        assert r["http_5xx"] == 0 and r["hung"] == 0 and r["connection_errors"] == 0, r
        assert r["sessions"] >= 1 and r["segments"] >= 2 * r["sessions"]
        assert 0 <= r["added_p50_s"] <= r["latency_p99_s"]
    assert data["levels"][1]["refused_429"] > 0  # 16 clients against 4 slots + a queue of 4
    assert data["after_sweep_s"] < 5.0
    assert "| 16 |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").exists()
