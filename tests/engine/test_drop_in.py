"""Drop-in mode on the real stock vLLM OpenAI server (CPU build, started as users start it) with the official
`openai` client: the scheduler plugin and the host-swap connector are its only additions, and job identity comes
from vLLM's own `session_id`."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

ROOT = Path(__file__).parents[2]
WORDS = " ".join(f"item{i}" for i in range(80))  # a prompt of several KV blocks: prefix reuse is whole blocks


def drop_in_command(model: Path, port: int) -> list[str]:
    """The README's drop-in command line (module form: the `vllm` console script does not start with the CPU
    build), on the test's model and port."""
    connector = {"kv_connector": "HostSwapConnector", "kv_connector_module_path": "runtime.engine.host_swap",
                 "kv_role": "kv_both", "kv_connector_extra_config": {"host_blocks": 64}}
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", "tiny", "--port", str(port), "--max-model-len", "1024", "--block-size", "32",
            "--enforce-eager", "--scheduler-cls", "runtime.engine.vllm_scheduler.PolicyScheduler",
            "--kv-transfer-config", json.dumps(connector)]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kv_log = tmp_path_factory.mktemp("drop_in") / "kv.jsonl"
    env = {**os.environ, "AGENTRIVER_POLICY": "astraea", "AGENTRIVER_KV_LOG": str(kv_log),
           "AGENTRIVER_SESSION_IDLE_S": "2", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    log = kv_log.with_name("server.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(drop_in_command(tiny_model, port), env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the stock server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the stock server did not start in 300 s")
        yield {"url": url, "kv_log": kv_log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def events(kv_log: Path, job: str) -> list[dict]:
    return [e for e in map(json.loads, kv_log.read_text().splitlines()) if e["job"] == job]


def test_a_session_keeps_its_kv_across_tool_calls_and_ends_with_its_last_call(server):
    client = OpenAI(base_url=server["url"] + "/v1", api_key="unused")
    messages = [{"role": "user", "content": f"look these up: {WORDS}"}]
    for i, xargs in enumerate(({"tool_category": "search"}, {"tool_category": "search"}, {"last": 1})):
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                           extra_body={"session_id": "agent-1", "vllm_xargs": xargs,
                                                       "ignore_eos": True})
        assert r.usage.completion_tokens == 8
        messages += [{"role": "assistant", "content": r.choices[0].message.content},
                     {"role": "user", "content": f"tool result {i}: found"}]
    log = events(server["kv_log"], "agent-1")
    at_tools = [e for e in log if e["cause"] == "tool_call"]
    assert [e["seg"] for e in at_tools] == [0, 1]  # the policy decided the KV at both tool calls
    resumes = [e for e in log if e["event"] == "resume"]
    assert [e["seg"] for e in resumes] == [1, 2] and all(e["tokens"] >= 64 for e in resumes)  # blocks reused
    assert log[-1]["event"] == "end" and log[-1]["cause"] == "job_done"
    assert log[-1]["holdings"]["jobs"] == 0


def test_a_silent_session_expires_and_plain_requests_stay_plain(server):
    client = OpenAI(base_url=server["url"] + "/v1", api_key="unused")
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"search {WORDS}"}],
                                   max_tokens=4, extra_body={"session_id": "quiet",
                                                             "vllm_xargs": {"tool_category": "search"}})
    assert [e["cause"] for e in events(server["kv_log"], "quiet")] == ["tool_call"]
    time.sleep(3)  # past AGENTRIVER_SESSION_IDLE_S
    plain = client.completions.create(model="tiny", prompt="hello", max_tokens=4)  # a step runs the expiry
    assert plain.usage.completion_tokens >= 1
    log = events(server["kv_log"], "quiet")
    assert log[-1]["event"] == "end" and log[-1]["cause"] == "expired" and log[-1]["holdings"]["jobs"] == 0
    jobs = {e["job"] for e in map(json.loads, server["kv_log"].read_text().splitlines())}
    assert jobs <= {"agent-1", "quiet"}  # the request without a session made no job
