"""The agent service with its scheduler in two shards (`scheduler_shards: 2`): real Ray and Serve started locally,
two real vLLM (CPU) engine actors serving the tiny model, one per shard, driven over HTTP with the official `openai`
client. Each session lives on the shard its id hashes to and runs on that shard's engine; the cluster view, the
metrics and the health check cover both; the queue bound refuses a burst with 429; a shard killed and restarted by
Ray leaves the other's sessions alone."""

import asyncio
import time

import httpx
import pytest

ray = pytest.importorskip("ray")
from openai import AsyncOpenAI  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from actors.global_scheduler import scheduler_name  # noqa: E402
from runtime.serving.agent_client import Turn, run_agent  # noqa: E402
from runtime.serving.config import ServeSettings  # noqa: E402
from runtime.serving.shards import shard_of  # noqa: E402
from tests.service import local_service  # noqa: E402

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)

MODEL = "tiny"


@pytest.fixture(scope="module")
def service(tiny_model):
    settings = ServeSettings(model=str(tiny_model), engines=2, scheduler_shards=2, max_queue=64,
                             engine={"max_model_len": 1024, "max_num_seqs": 8, "host_swap_blocks": 64}).model_dump()
    with local_service(settings) as url:
        yield url


def turns(n: int) -> list[Turn]:
    return [Turn(f"step {k}: look up the value and report", 8, "search" if k < n - 1 else "",
                 0.2 if k < n - 1 else 0.0) for k in range(n)]


def sessions_on(shard: int, count: int) -> list[str]:
    names = (f"sharded-{i}" for i in range(1000))
    return [n for n in names if shard_of(n, 2) == shard][:count]


def metric_by_shard(url: str, name: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    family = {f.name: f for f in text_string_to_metric_families(text)}[name]
    return {s.labels["shard"]: s.value for s in family.samples if s.name == name + "_count" or s.name == name}


def test_sessions_run_on_their_shards_engines(service):
    names = sessions_on(0, 3) + sessions_on(1, 3)
    before = metric_by_shard(service, "agentriver_job_completion_seconds")

    async def go():
        c = AsyncOpenAI(base_url=service + "/v1", api_key="unused", max_retries=0, timeout=300)
        return await asyncio.gather(*(run_agent(c, MODEL, n, turns(3), stream=i % 2 == 1)
                                      for i, n in enumerate(names)))

    results = asyncio.run(go())
    for r in results:
        assert r.segments == 3 and [s["index"] for s in r.view["segment_log"]] == [0, 1, 2]
        assert r.view["engine"] == f"agentriver-engine-{shard_of(r.session_id, 2)}"  # engine i belongs to shard i
    cluster = httpx.get(service + "/v1/cluster", timeout=30).json()
    assert cluster["shards"] == 2 and [(e["index"], e["shard"]) for e in cluster["engines"]] == [(0, 0), (1, 1)]
    after = metric_by_shard(service, "agentriver_job_completion_seconds")
    assert {k: after[k] - before.get(k, 0.0) for k in after} == {"0": 3.0, "1": 3.0}
    assert httpx.get(service + "/health", timeout=30).status_code == 200


def test_bounded_queue_answers_429_with_retry_after(service):
    """160 one-shot calls at once, spread over the two shards by their ids: 8 run on each shard's engine and 32 may
    wait in each shard's queue (max_queue 64 split in two); the rest are refused, none fails."""
    async def go():
        async with httpx.AsyncClient(base_url=service, timeout=300) as h:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "burst " * 50}], "max_tokens": 64}
            return await asyncio.gather(*(h.post("/v1/chat/completions", json=body) for _ in range(160)))

    answers = asyncio.run(go())
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) >= 80, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1 and refused.json()["error"]["type"] == "rate_limit_error"


def test_a_shard_restarting_leaves_the_other_shards_sessions_alone(service):
    """Kill shard 1's scheduler: a session of shard 0 is served meanwhile, and a session of shard 1 that was open
    carries on once Ray has restarted its shard, its history taken back from the shard's own checkpoint."""
    [steady], [paused] = sessions_on(0, 1), sessions_on(1, 1)
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0}
    with httpx.Client(base_url=service, timeout=300) as h:
        first = h.post("/v1/chat/completions", headers={"X-Session-Id": paused},
                       json={**body, "messages": [{"role": "user", "content": "before"}]})
        assert first.status_code == 200, first.text
        shard1 = ray.get_actor(scheduler_name(1), namespace="agentriver")
        old_pid = ray.get(shard1.pid.remote())
        ray.kill(shard1, no_restart=False)
        served = h.post("/v1/chat/completions", headers={"X-Session-Id": steady},
                        json={**body, "messages": [{"role": "user", "content": "meanwhile"}]})
        assert served.status_code == 200, served.text
        deadline = time.monotonic() + 120
        while ray.get(shard1.pid.remote()) == old_pid and time.monotonic() < deadline:
            time.sleep(0.2)
        again = h.post("/v1/chat/completions", headers={"X-Session-Id": paused},
                       json={**body, "messages": [{"role": "user", "content": "before"},
                                                  {"role": "assistant", "content": "x"},
                                                  {"role": "user", "content": "after"}]})
        assert again.status_code == 200, again.text
        view = h.get(f"/v1/sessions/{paused}").json()
        assert [s["index"] for s in view["segment_log"]] == [0, 1]
        for name in (steady, paused):
            assert h.post(f"/v1/sessions/{name}/close").status_code == 200
