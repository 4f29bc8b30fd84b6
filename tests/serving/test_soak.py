"""Session end reaches the engine: many short sessions through the served API leave nothing behind.

Measured before this was built: after 288 closed two-call sessions an engine's KV usage rose from 2.7% to 35%,
while the dispatcher believed 2 blocks were held, and every engine-side per-session table grew by one entry per
session. Here 1,000 two-call sessions run on real Ray, Serve and two vLLM (CPU) engines (the shared service): a
third are one-shot pairs of calls without a session; of the rest, those of the first half are closed or left to
expire in turn (the service closes them after `session_idle_s`), those of the second half are closed, so that the
last ones left expire while the run goes on. Afterwards every engine must hold no job state, no pinned block and
no host-swap block, and the service's processes must not have grown in memory since the first 100 sessions (the
figures are printed; measured here with 2,000 sessions: +0.7 MiB per vLLM engine core, +1.6 and +2.3 per engine
actor, +2.6 for the scheduler, +7.2 for the ingress replica, over 4.3 GiB in all). In the suite's process layout
(tests/conftest.py) the engine core also runs vLLM's model worker, whose memory was not measured before: it grew by
+30 to +144 MiB over the run (the more, the fresher the service), +35 in its last half. Whether that is torch
keeping buffers or a leak in the worker is open (issue 50's note), so there, and only there, the engine core has a
budget of its own.
"""

import asyncio
import os
import time

import httpx
import psutil
import pytest

ray = pytest.importorskip("ray")

from tests.service import SESSION_IDLE_S  # noqa: E402

SESSIONS = 1000  # over 3x the 288 after which the leak was measured
WARMUP = 100
CONCURRENCY = 32
IDLE_S = SESSION_IDLE_S  # the shared service closes a session idle this long
# The service's processes, by the names Ray gives its workers (and vLLM its engine cores).
SERVICE_PROCESSES = ("ray::GlobalScheduler", "ray::EngineActor", "ray::ServeReplica", "EngineCore")
NOTHING = {"jobs": 0, "pinned_blocks": 0, "host_swap_blocks": 0}


@pytest.fixture(scope="module")
def url(shared_service):
    assert shared_service["settings"]["session_idle_s"] == IDLE_S
    return shared_service["url"]


def service_rss_mib() -> dict[str, float]:
    """Resident memory of each of the service's processes (MiB), by process name and pid."""
    found = {}
    for p in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        cmd = " ".join(p.info["cmdline"] or ())
        name = next((n for n in SERVICE_PROCESSES if n in cmd), None)
        if name is not None and p.info["memory_info"] is not None:
            found[f"{name}:{p.info['pid']}"] = p.info["memory_info"].rss / 2**20
    return found


async def session(client: httpx.AsyncClient, i: int) -> None:
    """Two calls (the second resends the first with its answer, as agents do), then: close, leave (only in the
    first half), or neither call had a session at all."""
    kind = 0 if i % 3 == 1 and i >= SESSIONS // 2 else i % 3
    headers = {"X-Session-Id": f"soak-{i}"} if kind < 2 else {}
    messages = [{"role": "user", "content": f"task {i}: look this up"}]
    for turn in range(2):
        r = await client.post("/v1/chat/completions", headers=headers, json={
            "model": "tiny", "messages": messages, "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200, r.text
        messages += [{"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]},
                     {"role": "user", "content": f"tool result {turn}"}]
    if kind == 0:
        r = await client.post(f"/v1/sessions/soak-{i}/close")
        assert r.status_code == 200, r.text


async def run(url: str, first: int, n: int) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await session(client, i)

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await asyncio.gather(*(one(i) for i in range(first, first + n)))


def settled(url: str, within_s: float) -> dict:
    """The cluster view once no session is left and every engine says it holds nothing (or the last view)."""
    deadline = time.monotonic() + within_s
    while True:
        view = httpx.get(url + "/v1/cluster", timeout=30).json()
        done = view["sessions"] == 0 and all(e["holds"] == NOTHING for e in view["engines"])
        if done or time.monotonic() > deadline:
            return view
        time.sleep(1.0)


def test_a_thousand_sessions_leave_nothing_on_the_engines(url):
    asyncio.run(run(url, 0, WARMUP))
    settled(url, 10.0)  # the sessions left to expire stay open until after the main run
    rss_warm = service_rss_mib()
    t0 = time.monotonic()
    half = WARMUP + (SESSIONS - WARMUP) // 2
    asyncio.run(run(url, WARMUP, half - WARMUP))
    rss_half = service_rss_mib()
    asyncio.run(run(url, half, SESSIONS - half))
    took = time.monotonic() - t0
    view = settled(url, IDLE_S + 30)
    rss_end = service_rss_mib()
    growth = {p: round(rss_end.get(p, 0.0) - mib, 1) for p, mib in rss_warm.items()}
    late = {p: round(rss_end.get(p, 0.0) - mib, 1) for p, mib in rss_half.items()}
    print(f"\n{SESSIONS - WARMUP} sessions in {took:.0f} s; service RSS after {WARMUP}: "
          f"{sum(rss_warm.values()):.1f} MiB, after {SESSIONS}: {sum(rss_end.values()):.1f} MiB; growth per "
          f"process: {growth}, in the last {SESSIONS - half} sessions: {late}; "
          f"engines: {[(e['name'], e['holds'], e['kv_usage']) for e in view['engines']]}")
    assert view["sessions"] == 0
    for e in view["engines"]:
        assert e["holds"] == NOTHING, e
        assert e["kv_blocks_held"] == 0 and e["running"] == 0
    assert set(rss_end) == set(rss_half) == set(rss_warm)  # no process was restarted on the way
    # measured: +0.1 to +7.2 MiB per process, but for an engine core that also holds vLLM's model worker
    worker_inside = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
    assert all(mib < (256 if worker_inside and p.startswith("EngineCore") else 16) for p, mib in growth.items()), growth
