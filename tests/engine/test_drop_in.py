"""Drop-in mode on the real stock vLLM OpenAI server (CPU build, started as users start it) with the official
`openai` client: the scheduler plugin and the host-swap connector are its only additions, and job identity comes
from vLLM's own `session_id`."""

import asyncio
import json
import time
from pathlib import Path

import pytest
from openai import OpenAI

from bench.stock_server import StockServer, running

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)

WORDS = " ".join(f"item{i}" for i in range(80))  # a prompt of several KV blocks: prefix reuse is whole blocks
POOL_TOKENS = 2048 + 128  # max_model_len and a few blocks more


def words(name: str, tokens: int) -> str:
    """About `tokens` tokens of the tiny model's tokenizer, starting with `name` (no prefix shared with others)."""
    return " ".join(f"{name}{i}" for i in range(int(tokens / 3.4)))


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """The README's drop-in command line (module form), on the test's model, with a 2-s session idle time and a KV
    pool of one full-length request."""
    kv_log = tmp_path_factory.mktemp("drop_in") / "kv.jsonl"
    stock = StockServer(str(tiny_model), "drop_in", served_model_name="tiny", max_model_len=2048,
                        kv_pool_tokens=POOL_TOKENS, host_swap_blocks=128,
                        env={"AGENTRIVER_KV_LOG": str(kv_log), "AGENTRIVER_SESSION_IDLE_S": "2"})
    with running(stock, kv_log.with_name("server.log"), start_timeout_s=300) as url:
        yield {"url": url, "kv_log": kv_log}


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


def test_a_swapped_session_gets_its_kv_back_from_host_memory(server):
    """The caller asks for a swap at the tool call; plain requests then fill the pool, so the session's blocks
    are gone from vLLM's prefix cache too: only the connector's host copy can bring them back, and the resume
    says how many tokens came from it (the session, not a hint, names the job whose copy it is)."""
    client = OpenAI(base_url=server["url"] + "/v1", api_key="unused")
    messages = [{"role": "user", "content": f"swap these: {words('swapme', 300)}"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                       extra_body={"session_id": "swapped", "ignore_eos": True,
                                                   "vllm_xargs": {"tool_category": "search", "kv_action": "swap"}})
    for flood in ("flood", "deluge"):  # two, since each leaves the blocks freed last in the LRU
        client.completions.create(model="tiny", prompt=words(flood, POOL_TOKENS * 0.45), max_tokens=1)
    messages += [{"role": "assistant", "content": r.choices[0].message.content},
                 {"role": "user", "content": "tool result: found"}]
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0,
                                   extra_body={"session_id": "swapped", "vllm_xargs": {"last": 1}})
    log = events(server["kv_log"], "swapped")
    assert [(e["event"], e["cause"]) for e in log][:1] == [("swap", "tool_call")]
    resume = next(e for e in log if e["event"] == "resume")
    assert resume["cause"] == "from_swapped" and resume["host_tokens"] >= 256 and resume["tokens"] >= 256


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
    assert jobs <= {"agent-1", "quiet", "early", "resumed", "swapped"}  # the request without a session made no job


def test_under_memory_pressure_the_policy_serves_a_resumed_session_before_a_new_one(server):
    """Astraea ranks a session already in flight before one that has not started (it holds KV and history). A
    plain request fills the KV pool; while it runs, a new session's first call arrives, then a running session's
    second call; each needs over half the pool, so they run one after the other. vLLM's FCFS would serve the
    earlier arrival first (tests/engine/test_vllm_scheduler.py checks that order on the same queue)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=server["url"] + "/v1", api_key="unused")
    big = POOL_TOKENS * 0.53
    done: list[str] = []

    async def call(session: str, messages: list[dict], xargs: dict, max_tokens: int = 8):
        r = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens,
                                                 extra_body={"session_id": session, "vllm_xargs": xargs,
                                                             "ignore_eos": True})
        done.append(session)
        return r

    async def scenario() -> bool:
        first = [{"role": "user", "content": "resumed: plan"}]
        r = await call("resumed", first, {"tool_category": "search"})
        resumed = [*first, {"role": "assistant", "content": r.choices[0].message.content},
                   {"role": "user", "content": words("tool", big)}]  # a large tool result
        blocker = await client.completions.create(model="tiny", prompt=words("fill", big), max_tokens=850,
                                                  stream=True, extra_body={"ignore_eos": True})
        async for _ in blocker:  # its prompt is in the pool: the rest queue behind it
            break
        early = asyncio.create_task(call("early", [{"role": "user", "content": words("early", big)}], {"last": 1}))
        await asyncio.sleep(0.3)
        late = asyncio.create_task(call("resumed", resumed, {"last": 1}))
        await asyncio.sleep(0.05)
        queued_while_blocked = len(done) == 1  # only the first call of "resumed" had finished
        async for _ in blocker:
            pass
        await asyncio.gather(early, late)
        return queued_while_blocked

    assert asyncio.run(scenario()), "set-up: the plain request finished before both calls were queued"
    assert done == ["resumed", "resumed", "early"]
    log = events(server["kv_log"], "resumed")
    assert [e["event"] for e in log if e["event"] in ("resume", "end")] == ["resume", "end"]
