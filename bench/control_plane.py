"""What the GlobalScheduler actor sustains when a large fleet asks: the control plane alone, no vLLM.

    python -m bench.control_plane --engines 1000 --sessions 100000 --concurrency 16,64,256 --rates 500,1000,2000 \\
        --duration 20 --shards 1,2,4 --out bench/results/control_plane.json

The real GlobalScheduler actor (dispatcher, Astraea policy, journal writes to the GCS before each answer, its
once-a-second watch of every engine) plans for `--engines` simulated engines. One `SimulatedFleet` actor answers
for all of them (their shape when asked, an idle report at every watch, releases and aborts taken and dropped):
a thousand engine processes cannot run on one machine, and the scheduler talks to an engine only through those
calls. First `--sessions` sessions are opened (one segment each, then a tool call). Then, at each concurrency
level, that many callers (asyncio tasks of this driver, which runs at the lowest CPU priority) take random open
sessions' next segments back to back for `--duration` s: `acquire` (queue + grant), then `finish` with what an
engine would report (output tokens, KV kept, swapped or dropped at random). A session whose context would pass
the model's limit is closed and opened anew, so `--sessions` stay open.

Each level runs twice: with the callers' calls coalesced as an ingress replica sends them (`runtime.serving
.coalesce`: a call made while two of its kind are on their way goes with every other that waited, in one Ray call)
and with each call in its own Ray call (the transport before). Measured per level and transport: segments per
second (acquire + finish pairs), the latency each call adds as its caller sees it (p50, p99; acquire + finish is
what the control plane adds to a segment), calls per Ray call, and the journal's group writes (the scheduler's own
histogram, `agentriver_scheduler_journal_write_seconds`). Before the scheduler starts, the same callers call a
`BareActor` whose `acquire` and `finish` do nothing, both ways: what the Ray calls alone cost on this machine, the
ceiling any scheduler actor reached this way has (the figure that says whether a target is the scheduler's to
meet). The targets judge the coalesced transport, which the service uses.

Callers that each wait for their last segment (a closed loop) measure capacity, but at full load each one also
waits ~callers / throughput for the others' turns, whatever the scheduler adds. So after them, each `--rates` rate is
offered as an open loop: segments start at that rate (Poisson arrivals, coalesced calls) whatever the answers, and
their added latency is what the control plane adds at that load.
`--shards` repeats the whole run (sessions opened, callers, rates) for each count of scheduler shards
(`runtime.serving.shards`): that many GlobalScheduler actors, each planning for its share of the fleet and serving
the sessions that hash to it, the callers routing each session's calls as the ingress does. Each level also
reports the shards' CPU time per segment, read from their processes: on this machine the shards share two cores
with the driver and the GCS, and that figure says what a head with a core per shard would plan.
Targets (bench.targets, issue 18): >= 2,000 segments/s (the closed loop's best level) with p99 added latency
<= 5 ms (at an offered 2,000 segments/s when offered, else at that level), at 1,000 engines and 100,000 sessions;
each judged at the shard count that does best.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import ray
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from bench.output import command_line, save_figure, write_results
from runtime.engine.job_hints import SegmentOutcome
from runtime.engine.telemetry import HOLDINGS_NONE
from runtime.serving.config import EngineSettings, ServeSettings
from runtime.serving.dispatch import EngineShape, SegmentRequest
from runtime.serving.shards import ShardRouter, shard_engines

TARGET_SEGMENTS_PER_S = 2000.0
TARGET_P99_MS = 5.0
KV_STATES = ("preserved", "swapped", "discarded")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.control_plane", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", help="a preset built by `make model` (models/NAME) or a directory; "
                                                    "only its settings are read (nothing loads it)")
    p.add_argument("--engines", type=int, default=1000)
    p.add_argument("--sessions", type=int, default=100_000, help="sessions kept open")
    p.add_argument("--concurrency", default="32,128", help="callers at each level")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load at each level")
    p.add_argument("--rates", default="", help="offered segments/s, an open-loop level each (after the callers)")
    p.add_argument("--shards", default="1", help="scheduler shards (runtime.serving.shards): the whole run, callers "
                                                 "and rates, for each count")
    p.add_argument("--kv-blocks", type=int, default=8192, help="each simulated engine's KV blocks")
    p.add_argument("--max-num-seqs", type=int, default=64, help="each simulated engine's sequence slots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="control_plane.json")
    args = p.parse_args(argv)
    args.model_dir = args.model if Path(args.model).is_dir() else str(Path("models") / args.model)
    args.levels = [int(x) for x in args.concurrency.split(",") if x]
    args.rates = [float(x) for x in args.rates.split(",") if x]
    args.shard_counts = [int(x) for x in args.shards.split(",") if x]
    if args.engines < 1 or args.sessions < 1 or not args.levels or min(args.levels) < 1 or args.duration <= 0 \
            or any(r <= 0 for r in args.rates):
        p.error("--engines, --sessions, every --concurrency level and --rates rate, and --duration must be positive")
    if not args.shard_counts or not all(1 <= k <= args.engines for k in args.shard_counts):
        p.error(f"--shards: each count must be 1 to --engines ({args.engines}), got {args.shards!r}")
    return args


@ray.remote(num_cpus=0)
class SimulatedFleet:
    """Answers for every simulated engine, as `actors.engine_actor.EngineActor` answers for one."""

    def __init__(self, shape: EngineShape):
        self.shape = shape
        self.node = ray.get_runtime_context().get_node_id()
        self.calls = 0

    async def info(self, index: int) -> EngineShape:
        return replace(self.shape, name=f"sim-engine-{index}")

    async def stats(self, index: int, kv_seq: int = 0) -> dict:
        self.calls += 1
        return {"name": f"sim-engine-{index}", "node": self.node, "alive": True, "running": 0, "waiting": 0,
                "kv_usage": 0.0, "kv_changes": [], "kv_seq": kv_seq, "holdings": dict(HOLDINGS_NONE),
                "kv_events": [], "active": [], "finished": {}}

    async def release(self, index: int, jobs: dict) -> None:
        self.calls += 1

    async def abort(self, index: int, tickets: list) -> None:
        self.calls += 1

    async def shutdown(self, index: int) -> None:
        return None

    def count(self) -> int:
        return self.calls


@ray.remote(num_cpus=0)
class BareActor:
    """A scheduler that does nothing: the ceiling of the calls a segment needs, with the same arguments."""

    async def acquire(self, requests: list) -> list:
        return [True] * len(requests)

    async def finish(self, reports: list) -> list:
        return [True] * len(reports)

    async def close(self, *args) -> None:
        return None


class _FleetCall:
    def __init__(self, method, index: int):
        self.method, self.index = method, index

    def remote(self, *args):
        return self.method.remote(self.index, *args)


class FleetEngine:
    """Engine `index` of a `SimulatedFleet`, shaped like an engine actor's handle for the scheduler."""

    def __init__(self, fleet, index: int):
        self.fleet, self.index = fleet, index

    info = property(lambda self: _FleetCall(self.fleet.info, self.index))
    stats = property(lambda self: _FleetCall(self.fleet.stats, self.index))
    release = property(lambda self: _FleetCall(self.fleet.release, self.index))
    abort = property(lambda self: _FleetCall(self.fleet.abort, self.index))
    shutdown = property(lambda self: _FleetCall(self.fleet.shutdown, self.index))


class Sessions:
    """The open sessions' contexts, and the calls that move them on: each segment adds a prompt and an output."""

    def __init__(self, schedulers: list, count: int, max_len: int, rng: random.Random):
        self.max_len, self.rng = max_len, rng
        self.context = {f"s{i}": 0 for i in range(count)}
        self.idle = list(self.context)  # not in a segment now
        self.acquire_ms: list[float] = []
        self.finish_ms: list[float] = []
        self.calls_to(schedulers, coalesce=True)

    def calls_to(self, schedulers: list, coalesce: bool) -> None:
        """Send each session's segment calls to its shard of `schedulers`, as the ingress does
        (`runtime.serving.shards.ShardRouter`): coalesced, or each call alone."""
        self.router = ShardRouter(schedulers, coalesce)

    async def segment(self, session: str) -> None:
        shard = self.router.of(session)
        prompt = self.context[session] + self.rng.randint(100, 400)
        output = self.rng.randint(20, 120)
        if prompt + output > self.max_len:  # the agent's context is full: it ends, a new one takes its place
            await shard.scheduler.close.remote(session)
            prompt = self.rng.randint(100, 400)
        ticket = f"{session}/{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        grant = await shard.acquire.call(SegmentRequest(ticket, session, prompt, output, "search"))
        t1 = time.perf_counter()
        while grant is None:  # queued: parked until an engine has room
            grant = await shard.scheduler.wait.remote(ticket, 5.0)
        state = self.rng.choice(KV_STATES)
        outcome = SegmentOutcome(output, 0.05, 0.0, prompt, state, prompt + output if state != "discarded" else 0)
        t2 = time.perf_counter()
        await shard.finish.call((ticket, outcome))
        t3 = time.perf_counter()
        self.acquire_ms.append((t1 - t0) * 1e3)
        self.finish_ms.append((t3 - t2) * 1e3)
        self.context[session] = prompt + output

    async def next_segment(self) -> None:
        """The next segment of a random session not in one now."""
        pick = self.rng.randrange(len(self.idle))  # swapped to the end: popping a 100,000-list's middle is slow
        self.idle[pick], self.idle[-1] = self.idle[-1], self.idle[pick]
        session = self.idle.pop()
        try:
            await self.segment(session)
        finally:
            self.idle.append(session)

    async def caller(self, until: float) -> int:
        done = 0
        while time.perf_counter() < until:
            await self.next_segment()
            done += 1
        return done


async def open_sessions(sessions: Sessions, concurrency: int) -> None:
    """Every session's first segment, `concurrency` at a time, with a progress bar."""
    names = list(sessions.context)
    bar = tqdm(total=len(names), desc="opening sessions", unit="session", file=sys.stderr)

    async def worker(k: int) -> None:
        for name in names[k::concurrency]:
            await sessions.segment(name)
            bar.update()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    bar.close()


def journal_writes(text: bytes) -> dict:
    """Count and total seconds of the scheduler's journal writes, from its metrics."""
    for family in text_string_to_metric_families(text.decode()):
        if family.name == "agentriver_scheduler_journal_write_seconds":
            got = {s.name.rsplit("_", 1)[-1]: s.value for s in family.samples if s.name.endswith(("_count", "_sum"))}
            return {"count": got.get("count", 0.0), "sum_s": got.get("sum", 0.0)}
    return {"count": 0.0, "sum_s": 0.0}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Window:
    """One measured stretch of load: segments/s, each call's added latency, and how many calls each remote call
    carried."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions
        sessions.acquire_ms.clear()
        sessions.finish_ms.clear()
        self.sent = sessions.router.sent()
        self.start = time.perf_counter()

    def result(self, segments: int) -> dict:
        s = self.sessions
        elapsed = time.perf_counter() - self.start
        batches, calls = (now - before for now, before in zip(s.router.sent(), self.sent, strict=True))
        added = [a + f for a, f in zip(s.acquire_ms, s.finish_ms, strict=True)]
        return {"segments": segments, "seconds": elapsed, "segments_per_s": segments / elapsed,
                "calls_per_remote_call": calls / batches if batches else 0.0,
                "acquire_ms": {"p50": _pct(s.acquire_ms, 50), "p99": _pct(s.acquire_ms, 99)},
                "finish_ms": {"p50": _pct(s.finish_ms, 50), "p99": _pct(s.finish_ms, 99)},
                "added_ms": {"p50": _pct(added, 50), "p99": _pct(added, 99)}}


async def drive(sessions: Sessions, concurrency: int, duration: float) -> dict:
    """`concurrency` callers moving sessions on for `duration` s, each starting its next segment when its last
    ended (a closed loop: at full load each waits for the others' turns, ~callers / throughput per segment)."""
    window = Window(sessions)
    counts = await asyncio.gather(*(sessions.caller(window.start + duration) for _ in range(concurrency)))
    return window.result(sum(counts))


async def offer(sessions: Sessions, rate: float, duration: float) -> dict:
    """Segments started at `rate` per second (Poisson arrivals) for `duration` s, each whatever the others' answers
    (an open loop): the latency the control plane adds at that load, which the closed loop's callers queueing
    behind each other hide. Measured until the last one ended; an arrival that finds every session in a segment
    is not started (counted)."""
    window = Window(sessions)
    running: set[asyncio.Task] = set()
    due, end, started, no_session = window.start, window.start + duration, 0, 0
    while (due := due + sessions.rng.expovariate(rate)) < end:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if not sessions.idle:
            no_session += 1
            continue
        task = asyncio.ensure_future(sessions.next_segment())
        running.add(task)
        task.add_done_callback(running.discard)
        started += 1
    await asyncio.gather(*running)
    return {"offered_per_s": rate, "no_session": no_session, **window.result(started)}


TRANSPORTS = {"coalesced": True, "one_call_each": False}  # as the ingress sends them; one Ray call per call


async def journal_writes_of(schedulers: list) -> dict:
    """Every shard's journal writes, summed."""
    each = [journal_writes(t) for t in await asyncio.gather(*(s.metrics_text.remote() for s in schedulers))]
    return {"count": sum(w["count"] for w in each), "sum_s": sum(w["sum_s"] for w in each)}


async def cpu_seconds(schedulers: list) -> float:
    """CPU time the shards' processes have used (they run on this machine: the benchmark starts a local Ray)."""
    pids = await asyncio.gather(*(s.pid.remote() for s in schedulers))
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


async def drive_both(sessions: Sessions, targets: list, concurrency: int, duration: float, fleet=None) -> dict:
    """One level with each transport. Given the simulated engines' `fleet`, `targets` are the real scheduler's
    shards: then also their journal writes, the calls they made to engines, and the CPU time they used per segment
    (which says how many segments a second each core of a larger head would give: the shards here share two)."""
    out = {}
    for name, coalesce in TRANSPORTS.items():
        sessions.calls_to(targets, coalesce)
        if fleet is not None:
            before, fleet_before = await journal_writes_of(targets), await fleet.count.remote()
            cpu_before = await cpu_seconds(targets)
        level = await drive(sessions, concurrency, duration)
        if fleet is not None:
            cpu = await cpu_seconds(targets) - cpu_before
            after = await journal_writes_of(targets)
            writes = after["count"] - before["count"]
            level.update(journal_writes_per_s=writes / level["seconds"],
                         journal_write_ms_mean=(after["sum_s"] - before["sum_s"]) / writes * 1e3 if writes else 0.0,
                         engine_calls_per_s=(await fleet.count.remote() - fleet_before) / level["seconds"],
                         scheduler_cpu_ms_per_segment=cpu / level["segments"] * 1e3 if level["segments"] else 0.0,
                         scheduler_cores=cpu / level["seconds"])
        out[name] = level
    return out


async def run_levels(args, schedulers: list, sessions: Sessions, fleet, bare: dict[int, dict]) -> list[dict]:
    """Each level against the scheduler's shards, with the bare actor's figures at that level (`bare`, by
    callers)."""
    levels = []
    for concurrency in args.levels:
        level = {"concurrency": concurrency,
                 **await drive_both(sessions, schedulers, concurrency, args.duration, fleet),
                 "bare": bare[concurrency]}
        levels.append(level)
        print(f"{len(schedulers)} shard(s), {concurrency} callers: " + "; ".join(
            f"{name}: {level[name]['segments_per_s']:.0f} segments/s, added p50 {level[name]['added_ms']['p50']:.1f}"
            f" ms, p99 {level[name]['added_ms']['p99']:.1f} ms (bare actor: {level['bare'][name]['segments_per_s']:.0f}"
            f" segments/s)" for name in TRANSPORTS), file=sys.stderr)
    return levels


async def run_offered(args, schedulers: list, sessions: Sessions) -> list[dict]:
    """Each offered rate against the scheduler's shards, calls coalesced as the ingress sends them."""
    sessions.calls_to(schedulers, coalesce=True)
    offered = []
    for rate in args.rates:
        offered.append(await offer(sessions, rate, args.duration))
        got = offered[-1]
        print(f"{len(schedulers)} shard(s), offered {rate:.0f} segments/s: served {got['segments_per_s']:.0f}, "
              f"added p50 {got['added_ms']['p50']:.1f} ms, p99 {got['added_ms']['p99']:.1f} ms", file=sys.stderr)
    return offered


def settings_for(args, shards: int) -> ServeSettings:
    return ServeSettings(model=args.model_dir, engines=args.engines, scheduler_shards=shards,
                         max_queue=shards * max(1024, 2 * max(args.levels)), session_idle_s=3600.0,
                         namespace=f"control-plane-{uuid.uuid4().hex[:8]}",
                         engine=EngineSettings(max_num_seqs=args.max_num_seqs))


async def measure_sharded(args, shards: int, bare: dict[int, dict]) -> dict:
    """The whole run (sessions opened, callers, offered rates) against `shards` scheduler actors, each planning
    for its own engines of one simulated fleet, as the service's shards do."""
    from actors.global_scheduler import GlobalScheduler, scheduler_concurrency, scheduler_name

    settings = settings_for(args, shards)
    shape = EngineShape("sim-engine", args.kv_blocks, 16, args.max_num_seqs, settings.engine.max_model_len)
    fleet = SimulatedFleet.remote(shape)
    schedulers = [GlobalScheduler.options(name=scheduler_name(k), namespace=settings.namespace,
                                          max_concurrency=scheduler_concurrency(settings)).remote(
        settings.model_dump(), [FleetEngine(fleet, i) for i in shard_engines(args.engines, shards, k)], k)
        for k in range(shards)]
    t0 = time.perf_counter()
    await asyncio.gather(*(s.ready.remote() for s in schedulers))
    ready_s = time.perf_counter() - t0
    sessions = Sessions(schedulers, args.sessions, settings.engine.max_model_len, random.Random(args.seed))
    t0 = time.perf_counter()
    await open_sessions(sessions, max(args.levels))
    open_s = time.perf_counter() - t0
    levels = await run_levels(args, schedulers, sessions, fleet, bare)
    offered = await run_offered(args, schedulers, sessions)
    described = await asyncio.gather(*(s.describe.remote() for s in schedulers))
    for s in schedulers:
        ray.kill(s, no_restart=True)  # not `shutdown`: that stops engine actors, and these are simulated
    ray.kill(fleet)
    return {"shards": shards, "ready_s": ready_s, "open_s": open_s,
            "open_sessions": sum(d["sessions"] for d in described),
            "sessions_by_shard": [d["sessions"] for d in described], "levels": levels, "offered": offered}


async def measure(args) -> dict:
    from actors.global_scheduler import scheduler_concurrency

    one = settings_for(args, 1)
    actor = BareActor.options(max_concurrency=scheduler_concurrency(one)).remote()
    callers = Sessions([actor], args.sessions, one.engine.max_model_len, random.Random(args.seed))
    bare = {c: await drive_both(callers, [actor], c, args.duration)
            for c in tqdm(args.levels, desc="bare actor", file=sys.stderr)}
    ray.kill(actor)  # measured first, alone: the scheduler's engine watch would take CPU from it
    return {"shard_runs": [await measure_sharded(args, k, bare) for k in args.shard_counts]}


def _offered_at_target(run: dict) -> dict | None:
    """A run's open-loop level at the lowest offered rate that reaches the target rate, if it offered one."""
    offered = [lv for lv in run.get("offered", []) if lv["offered_per_s"] >= TARGET_SEGMENTS_PER_S]
    return min(offered, key=lambda lv: lv["offered_per_s"]) if offered else None


def targets(data: dict) -> list[dict]:
    """Capacity from the closed loop's best level of any shard count; the added latency at an offered 2,000
    segments/s where a run offered it (the closed loop's latency at its best level is its callers' own queueing),
    else at that level: the shard count with the lowest."""
    run, best = max(((r, lv) for r in data["shard_runs"] for lv in r["levels"]),
                    key=lambda p: p[1]["coalesced"]["segments_per_s"])
    got = best["coalesced"]
    capacity = {"name": f"segments/s >= {TARGET_SEGMENTS_PER_S:.0f} (best: {run['shards']} shard(s), "
                        f"{best['concurrency']} callers)",
                "value": got["segments_per_s"], "met": got["segments_per_s"] >= TARGET_SEGMENTS_PER_S}
    at_target = [(r, lv) for r in data["shard_runs"] if (lv := _offered_at_target(r)) is not None]
    if at_target:
        run, lv = min(at_target, key=lambda p: p[1]["added_ms"]["p99"])
        p99_at = (f"{lv['offered_per_s']:.0f} segments/s offered ({lv['segments_per_s']:.0f} served, "
                  f"{run['shards']} shard(s))")
    else:
        lv, p99_at = got, f"that level ({best['concurrency']} callers, {run['shards']} shard(s))"
    return [capacity, {"name": f"p99 added latency <= {TARGET_P99_MS} ms at {p99_at}",
                       "value": lv["added_ms"]["p99"], "met": lv["added_ms"]["p99"] <= TARGET_P99_MS}]


def _ms(d: dict) -> str:
    return f"{d['p50']:.2f} / {d['p99']:.2f}"


def _run_tables(run: dict) -> list[str]:
    rows = [f"{run['open_sessions']} open sessions at the end (by shard: "
            f"{', '.join(str(n) for n in run['sessions_by_shard'])}); the scheduler was ready in "
            f"{run['ready_s']:.1f} s and the sessions opened in {run['open_s']:.0f} s.", "",
            "Calls coalesced as the ingress sends them (`runtime.serving.coalesce`: a call made while two of its kind "
            "are on their way goes with the others that waited, in one Ray call):", "",
            "| callers | segments/s | calls per Ray call | acquire p50 / p99 ms | finish p50 / p99 ms "
            "| added p50 / p99 ms | journal writes/s | ms per write | engine calls/s | scheduler CPU ms per segment "
            "(cores used) | bare actor: segments/s | bare: added p50 / p99 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in run["levels"]:
        c, b = lv["coalesced"], lv["bare"]["coalesced"]
        rows.append(f"| {lv['concurrency']} | {c['segments_per_s']:.0f} | {c['calls_per_remote_call']:.1f} "
                    f"| {_ms(c['acquire_ms'])} | {_ms(c['finish_ms'])} | {_ms(c['added_ms'])} "
                    f"| {c['journal_writes_per_s']:.0f} | {c['journal_write_ms_mean']:.2f} "
                    f"| {c['engine_calls_per_s']:.0f} | {c['scheduler_cpu_ms_per_segment']:.2f} "
                    f"({c['scheduler_cores']:.2f}) | {b['segments_per_s']:.0f} | {_ms(b['added_ms'])} |")
    rows += ["", "Each call in its own Ray call (the transport before coalescing), same callers:", "",
             "| callers | segments/s | added p50 / p99 ms | journal writes/s | bare actor: segments/s "
             "| bare: added p50 / p99 ms | coalesced / one call each, segments/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in run["levels"]:
        o, b = lv["one_call_each"], lv["bare"]["one_call_each"]
        rows.append(f"| {lv['concurrency']} | {o['segments_per_s']:.0f} | {_ms(o['added_ms'])} "
                    f"| {o['journal_writes_per_s']:.0f} | {b['segments_per_s']:.0f} | {_ms(b['added_ms'])} "
                    f"| {lv['coalesced']['segments_per_s'] / o['segments_per_s']:.2f}x |")
    if run.get("offered"):
        rows += ["", "Offered load (an open loop: segments start at the rate, Poisson, whatever the answers; calls "
                 "coalesced):", "",
                 "| offered segments/s | served segments/s | calls per Ray call | acquire p50 / p99 ms "
                 "| finish p50 / p99 ms | added p50 / p99 ms | arrivals with no free session |",
                 "|---:|---:|---:|---:|---:|---:|---:|"]
        rows += [f"| {lv['offered_per_s']:.0f} | {lv['segments_per_s']:.0f} | {lv['calls_per_remote_call']:.1f} "
                 f"| {_ms(lv['acquire_ms'])} | {_ms(lv['finish_ms'])} | {_ms(lv['added_ms'])} | {lv['no_session']} |"
                 for lv in run["offered"]]
    return rows


def markdown(data: dict) -> str:
    m = data["meta"]
    rows = [f"`{m['command']}`", "",
            f"{m['engines']} simulated engines; {m['sessions']} sessions kept open. Machine: {m['machine']}. "
            "The bare actor (one actor whose calls do nothing) is measured once, before any scheduler.", "",
            "By scheduler shards (`scheduler_shards`, `runtime.serving.shards`; calls coalesced):", "",
            "| shards | best segments/s (callers) | its added p50 / p99 ms | "
            + " | ".join(f"offered {r:.0f}/s: served, added p99 ms" for r in m.get("rates", [])) + " |",
            "|---:|---:|---:|" + "---:|" * len(m.get("rates", []))]
    for run in data["shard_runs"]:
        best = max(run["levels"], key=lambda lv: lv["coalesced"]["segments_per_s"])
        offered = " | ".join(f"{lv['segments_per_s']:.0f}, {lv['added_ms']['p99']:.1f}" for lv in run["offered"])
        rows.append(f"| {run['shards']} | {best['coalesced']['segments_per_s']:.0f} ({best['concurrency']}) "
                    f"| {_ms(best['coalesced']['added_ms'])} |" + (f" {offered} |" if offered else ""))
    for run in data["shard_runs"]:
        rows += ["", f"## {run['shards']} scheduler shard(s)", "", *_run_tables(run)]
    rows += ["", "| target | measured | met |", "|---|---:|:---:|"]
    rows += [f"| {t['name']} | {t['value']:.1f} | {'yes' if t['met'] else 'NO'} |" for t in data["targets"]]
    return "\n".join(rows) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.8))
    bare = data["shard_runs"][0]["levels"]
    x = [lv["concurrency"] for lv in bare]
    for name, style in (("coalesced", "-"), ("one_call_each", "--")):
        a.plot(x, [lv["bare"][name]["segments_per_s"] for lv in bare], "s" + style, c="gray", alpha=0.5,
               label=f"bare actor, {name.replace('_', ' ')}")
    for run in data["shard_runs"]:
        levels, k = run["levels"], run["shards"]
        x = [lv["concurrency"] for lv in levels]
        line = a.plot(x, [lv["coalesced"]["segments_per_s"] for lv in levels], "o-", label=f"{k} shard(s)")[0]
        a.plot(x, [lv["one_call_each"]["segments_per_s"] for lv in levels], "o--", c=line.get_color(), alpha=0.6,
               label=f"{k} shard(s), one call each")
        b.plot(x, [lv["coalesced"]["added_ms"]["p99"] for lv in levels], "o-", c=line.get_color(),
               label=f"p99, {k} shard(s)")
        b.plot(x, [lv["coalesced"]["added_ms"]["p50"] for lv in levels], "^--", c=line.get_color(),
               label=f"p50, {k} shard(s)")
        offered = run.get("offered", [])
        c.plot([lv["offered_per_s"] for lv in offered], [lv["added_ms"]["p99"] for lv in offered], "o-",
               c=line.get_color(), label=f"p99, {k} shard(s)")
        c.plot([lv["offered_per_s"] for lv in offered], [lv["added_ms"]["p50"] for lv in offered], "^--",
               c=line.get_color(), label=f"p50, {k} shard(s)")
    for ax in (a, b):  # the levels measured, not a log scale's minor ticks
        ax.set_xscale("log")
        ax.set_xticks(x, [str(v) for v in x])
        ax.xaxis.set_minor_locator(plt.NullLocator())
    a.axhline(TARGET_SEGMENTS_PER_S, ls=":", c="gray", label="target")
    a.set(xlabel="concurrent callers", ylabel="segments/s", yscale="log", title="throughput")
    a.legend(fontsize=7)
    b.axhline(TARGET_P99_MS, ls=":", c="gray", label="p99 target")
    b.set(xlabel="concurrent callers", ylabel="ms per segment (acquire + finish)", yscale="log",
          title="latency the control plane adds (coalesced)")
    b.legend(fontsize=7)
    c.axhline(TARGET_P99_MS, ls=":", c="gray", label="p99 target")
    c.set(xlabel="offered segments/s (open loop, coalesced)", ylabel="ms per segment (acquire + finish)",
          yscale="log", title="latency at an offered load")
    c.legend(fontsize=7)
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    ray.init(include_dashboard=False, logging_level="ERROR")
    os.nice(19)  # after Ray started (its processes keep their priority): the driver is the load, not what is measured
    try:
        data = asyncio.run(measure(args))
    finally:
        ray.shutdown()
    data["meta"] = {"command": command_line("bench.control_plane", argv), "engines": args.engines,
                    "sessions": args.sessions, "rates": args.rates, "machine": f"{os.cpu_count()} CPUs"}
    data["targets"] = targets(data)
    print(write_results(args.out, data, markdown, plot))
    return data


if __name__ == "__main__":
    main()
