"""The agent service on a real multi-node Ray cluster on this machine: a head (Serve, the scheduler) and worker nodes
that each offer one `agentriver_engine` unit, as cluster.yaml's workers do. Engines land one per worker node by
the settings alone; a worker node removed under streaming sessions loses none of them (its segments are
recomputed on the other engine, each answered once); a node added later gets the lost engine back, and it
receives work."""

import asyncio
import time

import httpx
import pytest

ray = pytest.importorskip("ray")
from openai import AsyncOpenAI  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from runtime.serving.agent_client import Turn, run_agent  # noqa: E402
from runtime.serving.config import ServeSettings  # noqa: E402
from tests.service import local_service  # noqa: E402

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)

MODEL = "tiny"
ENGINE_SLOT = {"agentriver_engine": 1}
HEAD = "agentriver_head"  # the ingress (Serve spreads replicas over nodes) and the scheduler are pinned to the head


@pytest.fixture(scope="module")
def svc(tiny_model):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "resources": {HEAD: 1}})
    workers = [cluster.add_node(num_cpus=1, resources=ENGINE_SLOT) for _ in range(2)]
    settings = ServeSettings(model=str(tiny_model), engines=2, engine_resources=ENGINE_SLOT,
                             scheduler_resources={HEAD: 0.01}, ingress_resources={HEAD: 0.01},
                             engine={"max_model_len": 1024, "max_num_seqs": 16, "host_swap_blocks": 64})
    try:
        with local_service(settings.model_dump(), address=cluster.address) as url:
            yield {"url": url, "cluster": cluster, "workers": workers}
    finally:
        cluster.shutdown()


def engines(url: str, until=lambda es: True, within_s: float = 60) -> list[dict]:
    """/v1/cluster's engines, once `until` holds for them."""
    deadline = time.monotonic() + within_s
    while True:
        es = httpx.get(url + "/v1/cluster", timeout=30).json()["engines"]
        if until(es) or time.monotonic() > deadline:
            return es
        time.sleep(0.2)


def turns(n: int, max_tokens: int) -> list[Turn]:
    return [Turn(f"step {k}: " + "look up the value and report " * 5, max_tokens, "search" if k < n - 1 else "",
                 0.5 if k < n - 1 else 0.0) for k in range(n)]


def agents(url: str, prefix: str, n: int, max_tokens: int, on_running=None) -> list:
    async def go():
        c = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        tasks = [asyncio.create_task(run_agent(c, MODEL, f"{prefix}-{i}", turns(3, max_tokens), stream=True))
                 for i in range(n)]
        if on_running is not None:
            await asyncio.to_thread(on_running)
        return await asyncio.gather(*tasks)

    return asyncio.run(go())


def test_engines_land_one_per_worker_node(svc):
    es = engines(svc["url"], lambda es: all(e["node"] for e in es))
    assert sorted(e["node"] for e in es) == sorted(w.node_id for w in svc["workers"])


def test_a_worker_node_removed_under_streaming_sessions_loses_none_and_a_new_node_gets_work(svc):
    url, cluster = svc["url"], svc["cluster"]
    victim = svc["workers"][0]
    [lost] = [e["name"] for e in engines(url, lambda es: all(e["node"] for e in es)) if e["node"] == victim.node_id]

    def remove_when_busy():
        engines(url, lambda es: any(e["name"] == lost and e["running"] >= 2 for e in es))
        cluster.remove_node(victim)

    results = agents(url, "node-loss", 8, 96, remove_when_busy)
    assert len(results) == 8 and all(r.segments == 3 for r in results)
    logs = [s for r in results for s in r.view["segment_log"]]
    assert sum(s["retries"] for s in logs) >= 1  # segments running on the lost node were recomputed
    assert all(s["output_tokens"] <= 96 for s in logs)  # each answered once: never more than its budget
    assert all(r.completion_tokens <= 3 * 96 for r in results)
    assert not next(e for e in engines(url) if e["name"] == lost)["alive"]

    added = cluster.add_node(num_cpus=1, resources=ENGINE_SLOT)  # Ray restarts the lost engine there
    back = engines(url, lambda es: any(e["name"] == lost and e["alive"] and e["node"] == added.node_id
                                       for e in es), within_s=300)
    assert any(e["name"] == lost and e["alive"] and e["node"] == added.node_id for e in back), back
    results = agents(url, "node-added", 6, 32)
    assert any(s["engine"] == lost for r in results for s in r.view["segment_log"])
