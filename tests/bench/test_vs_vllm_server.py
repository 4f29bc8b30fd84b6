"""bench.vs_vllm_server end to end on the tiny model: vLLM's own server started with our engine settings and in
drop-in mode, the same agent client against both, and the target check reading the result."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.vs_vllm_server import peak_live_context, saturated_rate

ROOT = Path(__file__).parents[2]


def test_peak_live_context_counts_each_session_once_until_it_ends():
    calls = [(1.0, "a", 100), (2.0, "b", 50), (3.0, "a", 180), (5.0, "b", 90)]
    assert peak_live_context(calls, {"a": 4.0, "b": 6.0}) == 230  # a's 180 + b's 50 at t=3; a ended before b grew
    assert peak_live_context(calls, {"a": 9.0, "b": 9.0}) == 270


def test_throughput_counts_only_intervals_with_requests_waiting():
    samples = [(0.0, 0, 0), (1.0, 50, 3), (2.0, 150, 2), (3.0, 250, 1), (4.0, 280, 0), (5.0, 290, 0)]
    assert saturated_rate(samples) == 100.0  # 1-2 s and 2-3 s; not the ramp up, nor the tail
    assert saturated_rate(samples[3:]) is None


@pytest.mark.service
def test_stock_server_and_drop_in_through_one_client(tiny_model, tool_trace, tmp_path):
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "bench.vs_vllm_server", "--trace", str(tool_trace), "--model",
                          str(tiny_model), "--servers", "stock_like_ours,drop_in", "--pressures", "2", "--loads", "2",
                          "--notool-load", "2", "--notool-rounds", "1", "--tool-time-scale", "0.5",
                          "--max-model-len", "1024", "--host-swap-blocks", "64", "--logs", str(tmp_path / "logs"),
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["server"], r["tools"]) for r in rows] == [("stock_like_ours", True), ("stock_like_ours", False),
                                                         ("drop_in", True), ("drop_in", False)]
    for r in rows:
        assert r["jobs"] == (3 if r["tools"] else 5) and r["http_errors"] == 0  # no tools: each segment alone
        assert r["output_tokens"] == 64  # ignore_eos: exactly the trace's tokens
        assert r["kv_pool_tokens"] == 1024 + 128  # the smallest pool that holds one full-length request
        assert r["prefix_hit_rate"] is not None and r["peak_live_context_tokens"] > 0
    stock, drop_in = rows[0], rows[2]
    assert stock["reused_tokens"] is None
    assert drop_in["reused_tokens"] >= 32  # sessions a and c found their KV kept across their tool calls
    assert "(b)" in out.with_suffix(".md").read_text() and out.with_suffix(".png").exists()
    check = subprocess.run([sys.executable, "-m", "bench.targets", str(out)], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
    assert check.returncode == 0, check.stderr
    assert "drop-in output tokens/s" in check.stdout
