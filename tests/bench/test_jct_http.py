"""bench.jct_http end to end: agents through the OpenAI client against the served app (the shared service)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.service
def test_http_replay_against_the_running_service(shared_service, tool_trace, tiny_model, tmp_path):
    """`--url`: the replay drives a service that is already running (the shared one, astraea) instead of starting
    one per policy; the policy and engines in its rows are the service's. Starting a service per policy is the
    code `make run` runs (deployments.launch.start/stop); the served vllm baseline runs in test_service_load."""
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "bench.jct_http", "--trace", str(tool_trace), "--model",
                          str(tiny_model), "--url", shared_service["url"], "--rate-scales", "2",
                          "--tool-time-scale", "0.5", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["meta"]["url"] == shared_service["url"]
    [r] = data["rows"]
    assert r["policy"] == "astraea" and r["engines"] == 2  # the service's, read from /v1/cluster
    assert data["meta"]["max_model_len"] == shared_service["settings"]["engine"]["max_model_len"]
    assert r["jobs"] == 3 and r["http_errors"] == 0
    assert r["output_tokens"] == 64  # ignore_eos: exactly the trace's output tokens
    assert r["p99_jct_s"] >= r["avg_jct_s"] > 0.25  # job a waits 0.5 x 0.5 s for its tool
    # astraea decides at every segment end of a session (the engine is not told which one is the job's last: 5
    # segments)
    assert r["kv_preserve"] + r["kv_swap"] + r["kv_discard"] == 5
    assert "| astraea |" in out.with_suffix(".md").read_text() and (tmp_path / "r_jct_vs_load.png").exists()


def test_answers_of_round_trip_tokens_come_back_as_the_same_tokens(tiny_model):
    """A chat client sends each answer back as text; answers drawn from `round_trip_ids` re-tokenise to the very
    ids the model drew, in any order (random ids of a byte-level BPE mostly do not: the check below fails for
    them), so a server that re-renders the conversation can find the answer's KV again."""
    import random

    from transformers import AutoTokenizer

    from bench.jct_http import round_trip_ids

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    words = round_trip_ids(str(tiny_model))
    assert len(words) > 100
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.choice(words) for _ in range(200)]
        assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids
    noise = [rng.randrange(len(tok)) for _ in range(200)]
    assert tok.encode(tok.decode(noise, skip_special_tokens=True), add_special_tokens=False) != noise
