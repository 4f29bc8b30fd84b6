"""How much load the served agent API holds, and what its ingress and scheduler add to each call.

    python -m bench.service_load --model small --max-queue 64 --concurrency 16,64,128,256 --duration 30 \\
        --out bench/results/service_load.json

The service (GlobalScheduler, engine actors, Serve ingress) is started once on a local Ray. At each concurrency
level, that many clients (an asyncio loop each, plain HTTP with httpx) run agent sessions back to back for
`--duration` seconds: each session is `--segments` chat calls with a short tool wait between them, then a close.
A 429 is counted and honoured (the client waits its `Retry-After`, capped, and retries the call); any 5xx, any
connection error and any call that gets no answer within `--call-timeout` (a hung request) are counted as such.
For every answered call the benchmark records the total latency and the engine's own time for the segment (the
`Server-Timing: engine` header of non-streaming answers): total minus engine time is what the ingress and the
scheduler add, queueing for an engine included. After the sweep it times one new session's first call.

The load generator shares this machine with the service, so it runs at the lowest CPU priority (nice 19; Ray's
workers run at 15) and each client has its own HTTP connection: measured first at normal priority with one shared
connection pool, the generator itself took a whole core at 256 clients and the engine's time per call grew 4x.

Targets (bench.targets): 0 5xx and 0 hung requests at every level; the new session after the sweep answered within
1 s. Sweep up to 4x the queue bound to see refusals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.output import command_line, save_figure, write_results
from runtime.agents.policy import check_servable
from runtime.serving.config import VLLM_BASELINE, ServeSettings

RETRY_CAP_S = 2.0  # a refused client waits Retry-After but at most this, so the level keeps its pressure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.service_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", help="a preset built by `make model` (models/NAME) or a directory")
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--policy", default="astraea", help="the service's policy (`vllm`: unmodified vLLM engines behind "
                                                        "a FCFS global queue)")
    p.add_argument("--max-queue", type=int, default=64, help="the scheduler's queue bound (429 beyond it)")
    p.add_argument("--concurrency", default="16,64,128,256", help="clients at each level of the sweep")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load at each level")
    p.add_argument("--segments", type=int, default=2, help="calls per session")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens generated per call (exactly: ignore_eos)")
    p.add_argument("--tool-s", type=float, default=0.2, help="tool wait between a session's calls")
    p.add_argument("--call-timeout", type=float, default=120.0, help="a call unanswered this long is hung")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--out", default="service_load.json")
    args = p.parse_args(argv)
    args.model_dir = args.model if Path(args.model).is_dir() else str(Path("models") / args.model)
    args.levels = [int(x) for x in args.concurrency.split(",") if x]
    if not args.levels or min(args.levels) < 1:
        p.error("--concurrency: give positive client counts, e.g. 16,64,256")
    try:
        check_servable(args.policy, (VLLM_BASELINE,))
    except ValueError as e:
        p.error(f"--policy: {e}")
    return args


@dataclass
class Level:
    """What the clients of one concurrency level saw."""

    sessions: int = 0
    segments: int = 0
    refused_429: int = 0
    http_5xx: int = 0
    other_4xx: int = 0
    hung: int = 0
    connection_errors: int = 0
    latency_s: list[float] = field(default_factory=list)
    added_s: list[float] = field(default_factory=list)


def engine_seconds(server_timing: str) -> float | None:
    """The `engine;dur=<ms>` entry of a Server-Timing header, in seconds."""
    for part in server_timing.split(","):
        name, _, rest = part.strip().partition(";")
        if name == "engine" and rest.startswith("dur="):
            return float(rest[4:]) / 1e3
    return None


async def call(h, body: dict, level: Level, until: float, timeout: float) -> bool:
    """One chat call, retried after each 429 until it is answered or the level ends; True when answered 200."""
    import httpx

    while time.monotonic() < until:
        started = time.monotonic()
        try:
            r = await asyncio.wait_for(h.post("/v1/chat/completions", json=body), timeout)
        except TimeoutError:
            level.hung += 1
            return False
        except httpx.HTTPError:
            level.connection_errors += 1
            return False
        total = time.monotonic() - started
        if r.status_code == 429:
            level.refused_429 += 1
            await asyncio.sleep(min(RETRY_CAP_S, float(r.headers.get("retry-after", 1))))
            continue
        if r.status_code >= 500:
            level.http_5xx += 1
            return False
        if r.status_code != 200:
            level.other_4xx += 1
            return False
        level.segments += 1
        level.latency_s.append(total)
        engine = engine_seconds(r.headers.get("server-timing", ""))
        if engine is not None:
            level.added_s.append(max(0.0, total - engine))
        return True
    return False


async def client(url: str, model: str, i: int, args, level: Level, until: float) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=args.call_timeout + 10) as h:
        await client_sessions(h, model, i, args, level, until)


async def client_sessions(h, model: str, i: int, args, level: Level, until: float) -> None:
    n = 0
    while time.monotonic() < until:
        session = f"load-{i}-{n}"
        n += 1
        messages = [{"role": "user", "content": f"client {i} asks question {n}: " + "plan the next step " * 8}]
        ok = True
        for k in range(args.segments):
            body = {"model": model, "messages": messages, "max_tokens": args.max_tokens, "ignore_eos": True,
                    "session_id": session, "temperature": 0}
            ok = await call(h, body, level, until, args.call_timeout)
            if not ok:
                break
            messages = [*messages, {"role": "assistant", "content": "calling the tool"},
                        {"role": "tool", "tool_call_id": f"c{k}", "content": "the tool's answer " * 4}]
            if k < args.segments - 1:
                await asyncio.sleep(args.tool_s)
        await h.post(f"/v1/sessions/{session}/close")
        if ok:
            level.sessions += 1


async def run_level(url: str, model: str, clients: int, args) -> dict:
    level = Level()
    started = time.monotonic()
    until = started + args.duration
    await asyncio.gather(*(client(url, model, i, args, level, until) for i in range(clients)))
    wall = time.monotonic() - started
    return {"clients": clients, "wall_s": wall, "sessions": level.sessions, "segments": level.segments,
            "sessions_per_s": level.sessions / wall, "segments_per_s": level.segments / wall,
            "refused_429": level.refused_429, "http_5xx": level.http_5xx, "other_4xx": level.other_4xx,
            "hung": level.hung, "connection_errors": level.connection_errors,
            "latency_p50_s": pct(level.latency_s, 50), "latency_p99_s": pct(level.latency_s, 99),
            "added_p50_s": pct(level.added_s, 50), "added_p99_s": pct(level.added_s, 99)}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def first_answer_s(url: str, model: str) -> float:
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": "are you there?"}], "max_tokens": 1,
            "session_id": "after-the-sweep"}
    started = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    took = time.monotonic() - started
    httpx.post(f"{url}/v1/sessions/after-the-sweep/close", timeout=30)
    return took if r.status_code == 200 else float("inf")


def markdown(data: dict) -> str:
    m = data["meta"]
    lines = [f"Command: `{m['command']}`", "",
             f"Model `{m['model']}`, {m['engines']} engine(s), queue bound {m['max_queue']}, sessions of "
             f"{m['segments']} calls x {m['max_tokens']} tokens. Added = total latency minus the engine's own time "
             f"(ingress + scheduler, queueing included).", "",
             "| clients | sessions/s | segments/s | 429 | 5xx | hung | conn. errors | latency p50 (s) | p99 | "
             "added p50 (s) | added p99 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["levels"]:
        lines.append(f"| {r['clients']} | {r['sessions_per_s']:.2f} | {r['segments_per_s']:.2f} | "
                     f"{r['refused_429']} | {r['http_5xx']} | {r['hung']} | {r['connection_errors']} | "
                     f"{r['latency_p50_s']:.3f} | {r['latency_p99_s']:.3f} | {r['added_p50_s']:.3f} | "
                     f"{r['added_p99_s']:.3f} |")
    lines += ["", f"A new session's first call after the sweep: {data['after_sweep_s']:.3f} s."]
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = data["levels"]
    x = [r["clients"] for r in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, [r["segments_per_s"] for r in levels], "o-", label="segments/s")
    a.plot(x, [r["sessions_per_s"] for r in levels], "s-", label="sessions/s")
    a.set_xscale("log", base=2)
    a.set_xlabel("concurrent clients")
    a.set_title("throughput held")
    a.legend()
    b.plot(x, [r["added_p50_s"] for r in levels], "o-", label="added p50")
    b.plot(x, [r["added_p99_s"] for r in levels], "s-", label="added p99")
    b.plot(x, [r["latency_p99_s"] for r in levels], "^--", label="total p99")
    b.axvline(data["meta"]["max_queue"], color="grey", ls=":", label="queue bound")
    b.set_xscale("log", base=2)
    b.set_xlabel("concurrent clients")
    b.set_ylabel("seconds")
    b.set_title("latency: total and added by ingress + scheduler")
    b.legend()
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from deployments.launch import start, stop

    args = parse_args(argv)
    settings = ServeSettings(model=args.model_dir, engines=args.engines, policy=args.policy, max_queue=args.max_queue,
                             engine={"max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs})
    url = start(settings, args.port)
    os.nice(19 - os.nice(0))  # the service's processes were started above and keep their priority
    levels = []
    try:
        for clients in tqdm(args.levels, desc="concurrency levels", unit="level", file=sys.stderr):
            row = asyncio.run(run_level(url, settings.served_model_name, clients, args))
            print(f"{clients} clients: {row['segments_per_s']:.2f} segments/s, 5xx {row['http_5xx']}, hung "
                  f"{row['hung']}, 429 {row['refused_429']}, added p99 {row['added_p99_s']:.3f} s",
                  file=sys.stderr, flush=True)
            levels.append(row)
        after = first_answer_s(url, settings.served_model_name)
    finally:
        stop(settings)
    data = {"meta": {"command": command_line("bench.service_load", argv), "model": args.model,
                     "engines": args.engines, "policy": args.policy, "max_queue": args.max_queue,
                     "segments": args.segments, "max_tokens": args.max_tokens, "duration_s": args.duration},
            "levels": levels, "after_sweep_s": after}
    print(write_results(args.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
