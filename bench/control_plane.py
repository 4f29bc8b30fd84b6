"""What the GlobalScheduler actor sustains when a large fleet asks: the control plane alone, no vLLM.

    python -m bench.control_plane --engines 1000 --sessions 100000 --concurrency 16,64,256 --duration 20 \\
        --out bench/results/control_plane.json

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
Targets (bench.targets, issue 18): >= 2,000 segments/s with p99 added latency <= 5 ms, at 1,000 engines and
100,000 sessions.
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
import ray
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from bench.output import command_line, save_figure, write_results
from runtime.engine.job_hints import SegmentOutcome
from runtime.engine.telemetry import HOLDINGS_NONE
from runtime.serving.coalesce import Coalescer
from runtime.serving.config import EngineSettings, ServeSettings
from runtime.serving.dispatch import EngineShape, SegmentRequest

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
    p.add_argument("--kv-blocks", type=int, default=8192, help="each simulated engine's KV blocks")
    p.add_argument("--max-num-seqs", type=int, default=64, help="each simulated engine's sequence slots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="control_plane.json")
    args = p.parse_args(argv)
    args.model_dir = args.model if Path(args.model).is_dir() else str(Path("models") / args.model)
    args.levels = [int(x) for x in args.concurrency.split(",") if x]
    if args.engines < 1 or args.sessions < 1 or not args.levels or min(args.levels) < 1 or args.duration <= 0:
        p.error("--engines, --sessions, every --concurrency level and --duration must be positive")
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

    def __init__(self, scheduler, count: int, max_len: int, rng: random.Random):
        self.max_len, self.rng = max_len, rng
        self.context = {f"s{i}": 0 for i in range(count)}
        self.idle = list(self.context)  # not in a segment now
        self.acquire_ms: list[float] = []
        self.finish_ms: list[float] = []
        self.calls_to(scheduler, coalesce=True)

    def calls_to(self, scheduler, coalesce: bool) -> None:
        """Send the segment calls to `scheduler`, coalesced as the ingress sends them, or each call alone."""
        self.scheduler = scheduler
        many = {} if coalesce else {"max_batch": 1, "max_in_flight": 1 << 20}
        self.acquire = Coalescer(scheduler.acquire.remote, **many)
        self.finish = Coalescer(scheduler.finish.remote, **many)

    async def segment(self, session: str) -> None:
        prompt = self.context[session] + self.rng.randint(100, 400)
        output = self.rng.randint(20, 120)
        if prompt + output > self.max_len:  # the agent's context is full: it ends, a new one takes its place
            await self.scheduler.close.remote(session)
            prompt = self.rng.randint(100, 400)
        ticket = f"{session}/{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        grant = await self.acquire.call(SegmentRequest(ticket, session, prompt, output, "search"))
        t1 = time.perf_counter()
        while grant is None:  # queued: parked until an engine has room
            grant = await self.scheduler.wait.remote(ticket, 5.0)
        state = self.rng.choice(KV_STATES)
        outcome = SegmentOutcome(output, 0.05, 0.0, prompt, state, prompt + output if state != "discarded" else 0)
        t2 = time.perf_counter()
        await self.finish.call((ticket, outcome))
        t3 = time.perf_counter()
        self.acquire_ms.append((t1 - t0) * 1e3)
        self.finish_ms.append((t3 - t2) * 1e3)
        self.context[session] = prompt + output

    async def caller(self, until: float) -> int:
        done = 0
        while time.perf_counter() < until:
            pick = self.rng.randrange(len(self.idle))  # swapped to the end: popping a 100,000-list's middle is slow
            self.idle[pick], self.idle[-1] = self.idle[-1], self.idle[pick]
            session = self.idle.pop()
            try:
                await self.segment(session)
            finally:
                self.idle.append(session)
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


async def drive(sessions: Sessions, concurrency: int, duration: float) -> dict:
    """`concurrency` callers moving sessions on for `duration` s: segments/s, each call's added latency, and how
    many calls each remote call carried."""
    sessions.acquire_ms.clear()
    sessions.finish_ms.clear()
    sent = [(c.batches, c.calls) for c in (sessions.acquire, sessions.finish)]
    start = time.perf_counter()
    counts = await asyncio.gather(*(sessions.caller(start + duration) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    batches = sum(c.batches - b for c, (b, _) in zip((sessions.acquire, sessions.finish), sent, strict=True))
    calls = sum(c.calls - n for c, (_, n) in zip((sessions.acquire, sessions.finish), sent, strict=True))
    added = [a + f for a, f in zip(sessions.acquire_ms, sessions.finish_ms, strict=True)]
    return {"segments": sum(counts), "seconds": elapsed, "segments_per_s": sum(counts) / elapsed,
            "calls_per_remote_call": calls / batches if batches else 0.0,
            "acquire_ms": {"p50": _pct(sessions.acquire_ms, 50), "p99": _pct(sessions.acquire_ms, 99)},
            "finish_ms": {"p50": _pct(sessions.finish_ms, 50), "p99": _pct(sessions.finish_ms, 99)},
            "added_ms": {"p50": _pct(added, 50), "p99": _pct(added, 99)}}


TRANSPORTS = {"coalesced": True, "one_call_each": False}  # as the ingress sends them; one Ray call per call


async def drive_both(sessions: Sessions, target, concurrency: int, duration: float, scheduler=None,
                     fleet=None) -> dict:
    """One level with each transport; for the real scheduler also its journal writes and engine calls."""
    out = {}
    for name, coalesce in TRANSPORTS.items():
        sessions.calls_to(target, coalesce)
        before = journal_writes(await scheduler.metrics_text.remote()) if scheduler else None
        fleet_before = await fleet.count.remote() if fleet else 0
        level = await drive(sessions, concurrency, duration)
        if scheduler is not None:
            after = journal_writes(await scheduler.metrics_text.remote())
            writes = after["count"] - before["count"]
            level.update(journal_writes_per_s=writes / level["seconds"],
                         journal_write_ms_mean=(after["sum_s"] - before["sum_s"]) / writes * 1e3 if writes else 0.0,
                         engine_calls_per_s=(await fleet.count.remote() - fleet_before) / level["seconds"])
        out[name] = level
    return out


async def run_levels(args, scheduler, sessions: Sessions, fleet, bare: dict[int, dict]) -> list[dict]:
    """Each level against the scheduler, with the bare actor's figures at that level (`bare`, by callers)."""
    levels = []
    for concurrency in args.levels:
        level = {"concurrency": concurrency,
                 **await drive_both(sessions, scheduler, concurrency, args.duration, scheduler, fleet),
                 "bare": bare[concurrency]}
        levels.append(level)
        print(f"{concurrency} callers: " + "; ".join(
            f"{name}: {level[name]['segments_per_s']:.0f} segments/s, added p50 {level[name]['added_ms']['p50']:.1f}"
            f" ms, p99 {level[name]['added_ms']['p99']:.1f} ms (bare actor: {level['bare'][name]['segments_per_s']:.0f}"
            f" segments/s)" for name in TRANSPORTS), file=sys.stderr)
    return levels


async def measure(args) -> dict:
    settings = ServeSettings(model=args.model_dir, engines=args.engines, max_queue=max(1024, 2 * max(args.levels)),
                             session_idle_s=3600.0, namespace=f"control-plane-{uuid.uuid4().hex[:8]}",
                             engine=EngineSettings(max_num_seqs=args.max_num_seqs))
    from actors.global_scheduler import SCHEDULER_NAME, GlobalScheduler, scheduler_concurrency

    actor = BareActor.options(max_concurrency=scheduler_concurrency(settings)).remote()
    callers = Sessions(actor, args.sessions, settings.engine.max_model_len, random.Random(args.seed))
    bare = {c: await drive_both(callers, actor, c, args.duration)
            for c in tqdm(args.levels, desc="bare actor", file=sys.stderr)}
    ray.kill(actor)  # measured first, alone: the scheduler's engine watch would take CPU from it
    shape = EngineShape("sim-engine", args.kv_blocks, 16, args.max_num_seqs, settings.engine.max_model_len)
    fleet = SimulatedFleet.remote(shape)
    engines = [FleetEngine(fleet, i) for i in range(args.engines)]
    scheduler = GlobalScheduler.options(name=SCHEDULER_NAME, namespace=settings.namespace,
                                        max_concurrency=scheduler_concurrency(settings)
                                        ).remote(settings.model_dump(), engines)
    t0 = time.perf_counter()
    await scheduler.ready.remote()
    ready_s = time.perf_counter() - t0
    sessions = Sessions(scheduler, args.sessions, settings.engine.max_model_len, random.Random(args.seed))
    t0 = time.perf_counter()
    await open_sessions(sessions, max(args.levels))
    open_s = time.perf_counter() - t0
    levels = await run_levels(args, scheduler, sessions, fleet, bare)
    described = await scheduler.describe.remote()
    ray.kill(scheduler, no_restart=True)  # not `shutdown`: that stops engine actors, and these are simulated
    return {"ready_s": ready_s, "open_s": open_s, "open_sessions": described["sessions"], "levels": levels}


def targets(data: dict) -> list[dict]:
    best = max(data["levels"], key=lambda lv: lv["coalesced"]["segments_per_s"])
    got = best["coalesced"]
    return [{"name": f"segments/s >= {TARGET_SEGMENTS_PER_S:.0f} (best level: {best['concurrency']} callers)",
             "value": got["segments_per_s"], "met": got["segments_per_s"] >= TARGET_SEGMENTS_PER_S},
            {"name": f"p99 added latency <= {TARGET_P99_MS} ms at that level", "value": got["added_ms"]["p99"],
             "met": got["added_ms"]["p99"] <= TARGET_P99_MS}]


def _ms(d: dict) -> str:
    return f"{d['p50']:.2f} / {d['p99']:.2f}"


def markdown(data: dict) -> str:
    m = data["meta"]
    rows = [f"`{m['command']}`", "",
            f"{m['engines']} simulated engines, {data['open_sessions']} open sessions at the end; the scheduler "
            f"was ready in {data['ready_s']:.1f} s and the sessions opened in {data['open_s']:.0f} s. "
            f"Machine: {m['machine']}.", "",
            "Calls coalesced as the ingress sends them (`runtime.serving.coalesce`: a call made while two of its kind "
            "are on their way goes with the others that waited, in one Ray call):", "",
            "| callers | segments/s | calls per Ray call | acquire p50 / p99 ms | finish p50 / p99 ms "
            "| added p50 / p99 ms | journal writes/s | ms per write | engine calls/s | bare actor: segments/s "
            "| bare: added p50 / p99 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in data["levels"]:
        c, b = lv["coalesced"], lv["bare"]["coalesced"]
        rows.append(f"| {lv['concurrency']} | {c['segments_per_s']:.0f} | {c['calls_per_remote_call']:.1f} "
                    f"| {_ms(c['acquire_ms'])} | {_ms(c['finish_ms'])} | {_ms(c['added_ms'])} "
                    f"| {c['journal_writes_per_s']:.0f} | {c['journal_write_ms_mean']:.2f} "
                    f"| {c['engine_calls_per_s']:.0f} | {b['segments_per_s']:.0f} | {_ms(b['added_ms'])} |")
    rows += ["", "Each call in its own Ray call (the transport before coalescing), same callers:", "",
             "| callers | segments/s | added p50 / p99 ms | journal writes/s | bare actor: segments/s "
             "| bare: added p50 / p99 ms | coalesced / one call each, segments/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in data["levels"]:
        o, b = lv["one_call_each"], lv["bare"]["one_call_each"]
        rows.append(f"| {lv['concurrency']} | {o['segments_per_s']:.0f} | {_ms(o['added_ms'])} "
                    f"| {o['journal_writes_per_s']:.0f} | {b['segments_per_s']:.0f} | {_ms(b['added_ms'])} "
                    f"| {lv['coalesced']['segments_per_s'] / o['segments_per_s']:.2f}x |")
    rows += ["", "| target | measured | met |", "|---|---:|:---:|"]
    rows += [f"| {t['name']} | {t['value']:.1f} | {'yes' if t['met'] else 'NO'} |" for t in data["targets"]]
    return "\n".join(rows) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = data["levels"]
    x = [lv["concurrency"] for lv in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, style in (("coalesced", "-"), ("one_call_each", "--")):
        label = name.replace("_", " ")
        a.plot(x, [lv[name]["segments_per_s"] for lv in levels], "o" + style, label=f"scheduler, {label}")
        a.plot(x, [lv["bare"][name]["segments_per_s"] for lv in levels], "s" + style, alpha=0.5,
               label=f"bare actor, {label}")
        b.plot(x, [lv[name]["added_ms"]["p99"] for lv in levels], "o" + style, label=f"p99, {label}")
        b.plot(x, [lv[name]["added_ms"]["p50"] for lv in levels], "^" + style, label=f"p50, {label}")
    a.axhline(TARGET_SEGMENTS_PER_S, ls=":", c="gray", label="target")
    a.set(xlabel="concurrent callers", ylabel="segments/s", xscale="log", yscale="log", title="throughput")
    a.legend(fontsize=7)
    b.axhline(TARGET_P99_MS, ls=":", c="gray", label="p99 target")
    b.set(xlabel="concurrent callers", ylabel="ms per segment (acquire + finish)", xscale="log", yscale="log",
          title="latency the control plane adds")
    b.legend(fontsize=7)
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
                    "sessions": args.sessions, "machine": f"{os.cpu_count()} CPUs"}
    data["targets"] = targets(data)
    print(write_results(args.out, data, markdown, plot))
    return data


if __name__ == "__main__":
    main()
