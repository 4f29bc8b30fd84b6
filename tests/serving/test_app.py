"""The agent service end to end: real Ray and Serve started locally, two real vLLM (CPU) engine actors serving the
tiny model (the shared service), driven over HTTP with the official `openai` client and httpx."""

import asyncio
import time

import httpx
import psutil
import pytest

ray = pytest.importorskip("ray")
from openai import APIStatusError, AsyncOpenAI  # noqa: E402

from actors.global_scheduler import SCHEDULER_NAME, engine_name  # noqa: E402
from runtime.serving.agent_client import Turn, run_agent  # noqa: E402
from runtime.serving.config import API_KEY_ENV  # noqa: E402
from tests.service import deploy, metric  # noqa: E402

MODEL = "tiny"


@pytest.fixture(scope="module")
def service(shared_service):
    return shared_service


def client(service, **kw) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=service["url"] + "/v1", api_key="unused", max_retries=0, timeout=300, **kw)


def turns(n: int, max_tokens: int = 12, tool_s: float = 0.2) -> list[Turn]:
    return [Turn(f"step {k}: " + "look up the value and report " * 5, max_tokens,
                 "search" if k < n - 1 else "", tool_s if k < n - 1 else 0.0) for k in range(n)]


def test_models_and_a_three_segment_session_is_one_job(service):
    async def go():
        c = client(service)
        models = await c.models.list()
        assert [m.id for m in models.data] == [MODEL]
        return await run_agent(c, MODEL, "three", turns(3))

    tokens_before = metric(service["url"], "agentriver_engine_generation_tokens_total")
    r = asyncio.run(go())
    assert r.segments == 3 and r.completion_tokens <= 36
    deadline = time.monotonic() + 10  # engines report to the scheduler every second
    while metric(service["url"], "agentriver_engine_generation_tokens_total") - tokens_before < r.completion_tokens:
        assert time.monotonic() < deadline, "the engines' output tokens did not reach /metrics"
        time.sleep(0.2)
    v = r.view
    assert v["session_id"] == "three" and v["segments"] == 3 and v["state"] == "tool"
    assert [s["index"] for s in v["segment_log"]] == [0, 1, 2]
    assert [s["tool_category"] for s in v["segment_log"]] == ["search", "search", ""]
    assert v["segment_log"][1]["prompt_tokens"] < v["segment_log"][0]["prompt_tokens"] + 60  # only what was added
    assert v["engine"].startswith("agentriver-engine-")
    # memory is plentiful, so the engine's KV manager kept the job's KV, and the segment's outcome said so
    assert v["kv_state"] == "preserved" and v["kv_tokens"] > 0
    gone = httpx.get(service["url"] + "/v1/sessions/three")
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "session_id"


def test_streaming_sends_deltas_then_usage(service):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "stream please " * 10}], "max_tokens": 20,
            "stream": True, "temperature": 0}
    with httpx.stream("POST", service["url"] + "/v1/chat/completions", json=body, timeout=120,
                      headers={"X-Session-Id": "streamer"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json

    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert 1 <= chunks[-1]["usage"]["completion_tokens"] <= 20
    assert len(chunks) >= 3  # the answer came in pieces, not at once
    httpx.post(service["url"] + "/v1/sessions/streamer/close")


@pytest.mark.parametrize("body, status, param", [
    ("{not json", 400, None),
    ({"model": MODEL}, 400, "messages"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 2000}]}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "session_id": "../etc"}, 400, "session_id"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "allowed_token_ids": []}, 400,
     "allowed_token_ids"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "allowed_token_ids": [-1]}, 400,
     "allowed_token_ids.0"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "allowed_token_ids": [5, 10 ** 9]}, 400,
     "allowed_token_ids"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "vllm_xargs": {"last": 2}}, 400,
     "vllm_xargs.last"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "vllm_xargs": {"kv_action": "keep"}}, 400,
     "vllm_xargs.kv_action"),
])
def test_malformed_requests_get_a_json_4xx_naming_the_field(service, body, status, param):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {"json": body}
    r = httpx.post(service["url"] + "/v1/chat/completions", timeout=60, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    if param:
        assert param.split(".")[0] in err["message"]


def test_allowed_token_ids_limit_the_answer_as_vllm_does(service, tiny_model):
    """vLLM's extension, taken as vLLM takes it; the replays of bench.vs_vllm_server send it to every server."""
    from transformers import AutoTokenizer

    from bench.jct_http import round_trip_ids

    words = round_trip_ids(str(tiny_model))[:3]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "say something"}], "max_tokens": 12,
            "ignore_eos": True, "temperature": 1.0, "allowed_token_ids": words}
    r = httpx.post(service["url"] + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    drawn = AutoTokenizer.from_pretrained(str(tiny_model)).encode(text, add_special_tokens=False)
    assert drawn and set(drawn) <= set(words)
    assert r.json()["usage"]["completion_tokens"] == 12


def test_vllm_xargs_say_what_they_say_to_the_drop_in_plugin(service):
    """The client of vLLM's own server with the plugin works here unchanged: `vllm_xargs.tool_category` feeds the
    session's record, `kv_action` overrides the KV manager (which keeps the KV when memory is plentiful, as here),
    and the call that says `last` ends the session (one request, no close)."""
    url = service["url"] + "/v1/chat/completions"
    jobs_before = metric(service["url"], "agentriver_job_completion_seconds_count")
    messages = [{"role": "user", "content": "look it up"}]
    first = httpx.post(url, json={"model": MODEL, "messages": messages, "max_tokens": 4, "session_id": "xargs",
                                  "vllm_xargs": {"tool_category": "search", "kv_action": "discard",
                                                 "other_plugin": 7}}, timeout=120)
    assert first.status_code == 200, first.text
    view = httpx.get(service["url"] + "/v1/sessions/xargs", timeout=30).json()
    assert [s["tool_category"] for s in view["segment_log"]] == ["search"]
    assert view["kv_state"] == "discarded"
    messages += [first.json()["choices"][0]["message"], {"role": "tool", "content": "found", "tool_call_id": "c"}]
    last = httpx.post(url, json={"model": MODEL, "messages": messages, "max_tokens": 4, "session_id": "xargs",
                                 "vllm_xargs": {"last": 1}}, timeout=120)
    assert last.status_code == 200 and last.json()["session_id"] == "xargs", last.text
    assert httpx.get(service["url"] + "/v1/sessions/xargs", timeout=30).status_code == 404
    assert metric(service["url"], "agentriver_job_completion_seconds_count") - jobs_before == 1


def test_unknown_session_and_paths_answer_json(service):
    for method, path, status in (("GET", "/v1/sessions/nobody", 404), ("POST", "/v1/sessions/nobody/close", 404),
                                 ("GET", "/v1/nothing", 404)):
        r = httpx.request(method, service["url"] + path, timeout=30)
        assert r.status_code == status and "error" in r.json()


def test_32_sessions_for_30_seconds_no_5xx(service):
    errors: list[str] = []

    async def agent(c, i, until):
        done = 0
        while time.monotonic() < until:
            try:
                r = await run_agent(c, MODEL, f"load-{i}-{done}", turns(3, max_tokens=8, tool_s=0.3), stream=i % 2)
                assert r.segments == 3
                done += 1
            except APIStatusError as e:
                errors.append(f"{e.status_code}: {e.message}")
                await asyncio.sleep(1)
        return done

    async def go():
        c = client(service)
        until = time.monotonic() + 30
        return await asyncio.gather(*(agent(c, i, until) for i in range(32)))

    before = metric(service["url"], "agentriver_job_completion_seconds_count")
    done = asyncio.run(go())
    assert not [e for e in errors if e.startswith("5")], errors
    assert all(n >= 1 for n in done), done
    assert metric(service["url"], "agentriver_job_completion_seconds_count") - before == sum(done)
    assert metric(service["url"], "agentriver_sessions") == 0


@pytest.mark.kills_service
def test_engine_killed_mid_run_loses_no_job(service):
    """Kill one engine actor while segments run on it: they are recomputed on the other engine, every session
    completes with each of its answers given once, and Ray restarts the engine, which rejoins."""
    async def go():
        c = client(service)
        tasks = [asyncio.create_task(run_agent(c, MODEL, f"fault-{i}", turns(3, max_tokens=96, tool_s=0.5),
                                               stream=True)) for i in range(8)]
        victim = ray.get_actor(engine_name(0), namespace="agentriver")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            cluster = httpx.get(service["url"] + "/v1/cluster", timeout=30).json()
            if cluster["engines"][0]["running"] >= 2:
                break
            await asyncio.sleep(0.05)
        old_pid = ray.get(victim.pid.remote())
        children = [p.pid for p in psutil.Process(old_pid).children(recursive=True)]
        ray.kill(victim, no_restart=False)
        return await asyncio.gather(*tasks), old_pid, children

    results, old_pid, children = asyncio.run(go())
    assert children  # vLLM's engine core runs in a child process
    assert len(results) == 8 and all(r.segments == 3 for r in results)
    assert all(r.completion_tokens <= 3 * 96 for r in results)
    logs = [s for r in results for s in r.view["segment_log"]]
    assert sum(s["retries"] for s in logs) >= 1  # at least one segment was running on the killed engine
    assert all(s["output_tokens"] <= 96 for s in logs)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if httpx.get(service["url"] + "/v1/cluster", timeout=30).json()["engines"][0]["alive"]:
            break
        time.sleep(2)
    else:
        pytest.fail("the restarted engine did not rejoin in 300 s")
    victim = ray.get_actor(engine_name(0), namespace="agentriver")
    assert ray.get(victim.pid.remote()) != old_pid
    stray = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert stray == [], "the killed engine's vLLM processes outlived it"


@pytest.mark.kills_service
def test_scheduler_killed_under_16_streaming_sessions_loses_none(service):
    """Kill the scheduler actor while 16 sessions stream: Ray restarts it, it takes its sessions back from its
    checkpoint, and every session completes with its whole history. A call the scheduler cannot answer in time is
    refused with 503 and Retry-After (which the client honours); those refusals span at most 10 s."""
    refused: list[float] = []

    async def record(response: httpx.Response) -> None:
        if response.status_code == 503:
            refused.append(time.monotonic())

    async def go():
        c = AsyncOpenAI(base_url=service["url"] + "/v1", api_key="unused", max_retries=10, timeout=300,
                        http_client=httpx.AsyncClient(event_hooks={"response": [record]}, timeout=300))
        tasks = [asyncio.create_task(run_agent(c, MODEL, f"restart-{i}", turns(4, max_tokens=48, tool_s=0.5),
                                               stream=True)) for i in range(16)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            cluster = httpx.get(service["url"] + "/v1/cluster", timeout=30).json()
            if sum(e["running"] for e in cluster["engines"]) >= 4:
                break
            await asyncio.sleep(0.05)
        scheduler = ray.get_actor(SCHEDULER_NAME, namespace="agentriver")
        old_pid = await scheduler.pid.remote()
        killed = time.monotonic()
        ray.kill(scheduler, no_restart=False)
        while await scheduler.pid.remote() == old_pid:  # the kill is asynchronous: the old process may answer
            await asyncio.sleep(0.05)
        back = time.monotonic() - killed  # a new process answers: restarted, its sessions restored
        return await asyncio.gather(*tasks), back, killed

    results, back, killed = asyncio.run(go())
    assert len(results) == 16 and all(r.segments == 4 for r in results)
    for r in results:
        log = r.view["segment_log"]
        assert [s["index"] for s in log] == [0, 1, 2, 3], r.view  # the whole history, each segment once
        assert all(s["output_tokens"] >= 1 for s in log) and r.view["state"] == "tool"
    window = (max(refused) - min(refused)) if refused else 0.0
    print(f"scheduler restart: a new process answered {back:.1f} s after the kill; {len(refused)} answers 503 "
          f"within {window:.1f} s, the first {(min(refused) - killed) if refused else 0.0:.1f} s after the kill")
    assert window <= 10.0


def test_two_ingress_replicas_with_a_key_serve_one_session_alternately(service):
    """One redeploy for two things the ingress's deployment decides: with `AGENTRIVER_API_KEY` set, calls without
    the key (or with a wrong one) are refused and the public paths stay open; with it, one session's calls
    alternate between the replicas and stay one job."""
    deploy(service["settings"], {API_KEY_ENV: "s3cret"}, replicas=2)
    key = {"Authorization": "Bearer s3cret"}
    served: list[str] = []
    messages = [{"role": "user", "content": "count with me"}]
    try:
        with httpx.Client(base_url=service["url"], timeout=300) as h:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert h.post("/v1/chat/completions", json=body).status_code == 401
            wrong = h.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
            for public in ("/health", "/openapi.json", "/docs"):  # described in README: no data behind them
                assert h.get(public).status_code == 200, public
            for private in ("/metrics", "/v1/cluster", "/healthz", "/docs/../v1/cluster"):  # exact paths only
                assert h.get(private).status_code == 401, private
            while len(served) < 24 and (len(served) < 4 or len(set(served)) < 2):
                r = h.post("/v1/chat/completions", headers={"X-Session-Id": "two-replicas", **key},
                           json={"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0})
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] <= 4
                served.append(r.headers["x-replica"])
                messages += [{"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]},
                             {"role": "user", "content": f"and {len(served)}"}]
            view = h.get("/v1/sessions/two-replicas", headers=key).json()
            assert h.post("/v1/sessions/two-replicas/close", headers=key).status_code == 200
    finally:
        deploy(service["settings"])  # back to one replica without a key, as the other tests of the service expect
    assert httpx.get(service["url"] + "/v1/models", timeout=30).status_code == 200
    assert len(set(served)) == 2, served
    assert view["segments"] == len(served) and [s["index"] for s in view["segment_log"]] == list(range(len(served)))
