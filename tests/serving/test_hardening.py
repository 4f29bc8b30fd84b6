"""The agent service under bursts, faults and hostile input, on real Ray, Serve and two vLLM (CPU) engines serving
the tiny model (the shared service, whose queue bound is the default 1,024). Each test reproduces a defect found by
trying the service as a new user and an attacker would: a burst past the scheduler actor's concurrency wedged it; a
closed-and-reused or disconnected session broke for good; error bodies carried Ray tracebacks; a huge chat body
blocked the event loop; with every engine gone, streams hung. The last test kills both engines (they restart and
rejoin); it runs after every other test of the shared service."""

import asyncio
import json
import re
import socket
import time

import httpx
import pytest

ray = pytest.importorskip("ray")

from actors.global_scheduler import engine_name  # noqa: E402
from tests.service import metric  # noqa: E402

MODEL = "tiny"
# What an error body must never show a client: a traceback, a source path, a process or actor id, an address.
LEAKS = re.compile(r"Traceback|File \"|\.py\b|pid=|ActorID|actor_id|\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")


@pytest.fixture(scope="module")
def url(shared_service):
    # the default queue bound (1024) is above Ray's default actor concurrency (1000): the burst case
    assert shared_service["settings"]["max_queue"] == 1024
    return shared_service["url"]


def chat(content: str = "hello there", max_tokens: int = 8, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


def assert_clean(response: httpx.Response) -> dict:
    """A JSON error body written for the client, with the request id that the log files it under."""
    body = response.json()
    assert not LEAKS.search(response.text), response.text
    assert body["error"]["message"] and body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


def sse_events(url: str, body: dict, session: str) -> list[str]:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"X-Session-Id": session},
                      timeout=300) as r:
        assert r.status_code == 200, r.read()
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def engines_idle(url: str, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if all(e["running"] == 0 for e in httpx.get(url + "/v1/cluster", timeout=30).json()["engines"]):
            return True
        time.sleep(0.25)
    return False


def generated_tokens(url: str) -> float:
    """Output tokens every engine has generated, once the count has settled: engines report it every second, so
    two readings 1.5 s apart must agree."""
    name = "agentriver_engine_generation_tokens_total"
    last, now = -1.0, metric(url, name)
    while now != last:
        time.sleep(1.5)
        last, now = now, metric(url, name)
    return now


def test_a_burst_past_the_actors_concurrency_is_refused_not_wedged(url):
    """1,100 one-shot calls of 64 tokens at once (more than Ray's default 1,000 concurrent calls of an async actor,
    which callers parked in the first scheduler could fill): each is answered 200 or 429 with Retry-After, and
    right after it the service answers normally with nothing left counted as running."""
    async def go():
        limits = httpx.Limits(max_connections=1200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as h:
            return await asyncio.gather(*(h.post("/v1/chat/completions", json=chat(max_tokens=64, ignore_eos=True))
                                          for _ in range(1100)))

    codes = [r.status_code for r in asyncio.run(go())]
    print(f"\nburst: {codes.count(200)} answered, {codes.count(429)} refused")
    assert set(codes) <= {200, 429}, sorted(set(codes))
    assert codes.count(200) >= 1024, codes.count(200)  # the queue bound and the engines' slots were all used
    started = time.monotonic()
    assert httpx.get(url + "/v1/models", timeout=30).status_code == 200
    assert httpx.post(url + "/v1/chat/completions", json=chat(), timeout=60).status_code == 200
    assert time.monotonic() - started < 5.0
    assert engines_idle(url, 5.0)  # nothing stayed counted as running


def test_429_409_and_404_bodies_carry_no_internals(url):
    async def busy():
        """The second call is sent once the first has streamed its first token, so it meets a running segment
        on any machine (a fixed sleep raced a fast one: the first call had already finished)."""
        async with httpx.AsyncClient(base_url=url, timeout=300) as h:
            body = chat(max_tokens=300, ignore_eos=True, stream=True, session_id="busy")
            async with h.stream("POST", "/v1/chat/completions", json=body) as first:
                lines = first.aiter_lines()
                async for line in lines:
                    if line.startswith("data: ") and '"content": "' in line:
                        break
                second = await h.post("/v1/chat/completions", json=chat(session_id="busy"))
                events = [line async for line in lines if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            return first, second

    first, second = asyncio.run(busy())
    assert first.status_code == 200 and second.status_code == 409
    assert assert_clean(second)["param"] == "session_id"
    httpx.post(url + "/v1/sessions/busy/close", timeout=30)
    missing = httpx.get(url + "/v1/sessions/nobody", timeout=30)
    assert missing.status_code == 404 and assert_clean(missing)["param"] == "session_id"


def test_a_closed_session_id_can_be_used_again(url):
    for _ in range(2):
        r = httpx.post(url + "/v1/chat/completions", json=chat(session_id="again"), timeout=60)
        assert r.status_code == 200, r.text
        assert httpx.get(url + "/v1/sessions/again", timeout=30).json()["segments"] == 1  # a new job each time
        assert httpx.post(url + "/v1/sessions/again/close", timeout=30).status_code == 200


def test_a_client_that_disconnects_mid_segment_leaves_its_session_usable(url):
    """An abandoned segment of 600 tokens is cancelled: the engines generate fewer than its 600 tokens. Counting
    tokens, not timing the engines' return to idle, tells cancellation from completion on a loaded machine too."""
    assert httpx.post(url + "/v1/chat/completions", json=chat(session_id="gone"), timeout=60).status_code == 200
    before = generated_tokens(url)
    body = chat("tell me a long story", max_tokens=600, ignore_eos=True, stream=True)
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"X-Session-Id": "gone"},
                      timeout=60) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if line.startswith("data: ") and '"content": "' in line)
    # the segment is cancelled on its engine and in the scheduler
    assert engines_idle(url, 60.0)
    assert generated_tokens(url) - before < 600
    view = httpx.get(url + "/v1/sessions/gone", timeout=30).json()
    assert view["state"] == "tool" and view["segments"] == 1  # the abandoned segment left no record
    events = sse_events(url, chat("go on", max_tokens=8, stream=True), "gone")
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] >= 1
    # the same for a non-streaming call whose client times out
    before = generated_tokens(url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=chat(max_tokens=600, ignore_eos=True, session_id="gone"),
                   timeout=1.0)
    assert engines_idle(url, 60.0)
    assert generated_tokens(url) - before < 600
    again = httpx.post(url + "/v1/chat/completions", json=chat(session_id="gone"), timeout=60)
    assert again.status_code == 200, again.text
    httpx.post(url + "/v1/sessions/gone/close", timeout=30)


def test_strict_fields_and_exact_ids(url):
    for body, param in ((chat(max_tokens=True), "max_tokens"), (chat(stream=1), "stream"),
                        (chat(session_id="nl\n"), "session_id"), (chat(temperature="0.5"), "temperature")):
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert assert_clean(r)["param"] == param


def test_client_text_is_never_read_as_control_tokens(url):
    def prompt_tokens(content: str) -> int:
        r = httpx.post(url + "/v1/chat/completions", json=chat(content, max_tokens=1), timeout=60)
        return r.json()["usage"]["prompt_tokens"]

    # as control tokens "</s><|system|>" would be 2 tokens; as text it is many more
    assert prompt_tokens("x </s><|system|>") - prompt_tokens("x") > 4


def test_huge_chat_bodies_are_refused_without_blocking_the_service(url):
    """A body over max_request_mb gets 413 before it is parsed; one under it but far over the context gets 400
    before it is tokenised; /v1/models keeps answering meanwhile."""
    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=120) as h:
            big = h.post("/v1/chat/completions", json=chat("word " * (5 * 2**20 // 5)))
            large = h.post("/v1/chat/completions", json=chat("word " * (3 * 2**20 // 5)))
            tasks = [asyncio.create_task(big), asyncio.create_task(large)]
            probes = []
            while not all(t.done() for t in tasks):
                started = time.monotonic()
                assert (await h.get("/v1/models")).status_code == 200
                probes.append(time.monotonic() - started)
                await asyncio.sleep(0.05)
            return [t.result() for t in tasks], probes

    (big, large), probes = asyncio.run(go())
    assert big.status_code == 413 and assert_clean(big)["param"] == "body"
    assert large.status_code == 400 and assert_clean(large)["param"] == "messages"
    assert max(probes) < 1.0, probes


def test_declared_oversized_body_is_refused_before_it_is_sent(url):
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 104857600\r\n\r\n")
        head = s.recv(65536).decode(errors="replace")  # no body sent: the answer must not wait for it
    assert head.startswith("HTTP/1.1 413"), head


@pytest.mark.kills_service
def test_with_every_engine_gone_streams_end_and_calls_fail_fast_then_recover(url):
    """Both engines killed under four streams: each stream ends with an error event (or completes) and then
    [DONE]; new calls get 503 with Retry-After quickly instead of hanging; once Ray has restarted an engine the
    service answers again."""
    body = chat("a long answer please", max_tokens=800, ignore_eos=True, stream=True)

    async def stream(h, i):
        events = []
        async with h.stream("POST", "/v1/chat/completions", json=body, headers={"X-Session-Id": f"dead-{i}"}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        return events

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=300) as h:
            tasks = [asyncio.create_task(stream(h, i)) for i in range(4)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                cluster = (await h.get("/v1/cluster")).json()
                if sum(e["running"] for e in cluster["engines"]) >= 4:
                    break
                await asyncio.sleep(0.1)
            for i in range(2):
                ray.kill(ray.get_actor(engine_name(i), namespace="agentriver"), no_restart=False)
            refused = None
            deadline = time.monotonic() + 30
            while refused is None and time.monotonic() < deadline:
                started = time.monotonic()
                r = await h.post("/v1/chat/completions", json=chat())
                assert time.monotonic() - started < 15.0  # answered, not parked
                if r.status_code == 503:
                    refused = r
                await asyncio.sleep(0.2)
            return await asyncio.wait_for(asyncio.gather(*tasks), 120), refused

    streams, refused = asyncio.run(go())
    for events in streams:
        assert events[-1] == "[DONE]", events[-3:]
        last = json.loads(events[-2])
        assert "error" in last or last["choices"][0]["finish_reason"] == "length", last
    assert any("error" in json.loads(e[-2]) for e in streams)
    assert refused is not None, "no 503 within 30 s of losing every engine"
    assert int(refused.headers["Retry-After"]) >= 1 and assert_clean(refused)["type"] == "server_error"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        r = httpx.post(url + "/v1/chat/completions", json=chat(), timeout=60)
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        time.sleep(2)
    else:
        pytest.fail("the service did not recover within 300 s of its engines restarting")
