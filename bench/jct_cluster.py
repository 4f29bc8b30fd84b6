"""Cluster arrangements in the simulator, and the global scheduler's decision cost.

    python -m bench.jct_cluster --mixes swe,infercept --engines 8,64 --jobs-per-engine 60 --seeds 0 \\
        --out bench/results/jct_cluster.json

Every arrangement runs the same trace on N engines of the Llama-3-8B/H100 profile:
- `rr+astraea`, `ll+astraea`: a job stays on one engine (round robin / least loaded at arrival), each engine
  schedules alone with Astraea;
- `autellix+plas`, `autellix+astraea`: Autellix's load balancing (short segments to the least-loaded engine,
  long ones sticky), with its PLAS or with Astraea on each engine;
- `global+astraea`: one cluster ready queue in Astraea's order, pulled under admission control, KV-home
  stickiness decided by cost (`runtime.agents.cluster.GlobalQueue`, which the GlobalScheduler actor runs).
The trace's rate grows with N (`--rates-per-engine` jobs/s per engine), so every N sees the same load per engine.
`--fleet mixed`: every second engine an A100 (`LLAMA3_8B_A100`: same KV room, steps 1.7-3x slower), the fleet a
cluster grown over hardware generations has; the policies plan in H100 time, each engine's backlog scaled by its
own slowness. `--fleet kv`: every second engine an H100 that shares its memory with another model
(`LLAMA3_8B_H100_SHARED`: the same speed, under a third of the KV room).

`--bound` adds the no-contention bound: each job alone on an idle engine of the fleet's fastest kind (its tool
time and its compute at batch 1), a floor no arrangement of the fleet can reach; `bench.targets` states it next to
each verdict. It is far below what contention leaves reachable, so `--best-kind` (a fleet of several kinds) adds a
reference closer to it: the global queue on the same trace with every engine of the fleet's best kind (the one as
fast as any and with as much KV room as any), i.e. the fleet with its imbalance removed. Not a bound (a better
arrangement of the uniform fleet would lower it), but what removing the imbalance is worth to the global queue.

The decision cost is measured on the real dispatcher (`runtime.serving.dispatch.Dispatcher`, what the actor
runs): with `--ready` segments waiting and every engine full, one segment finishes and `grant()` picks the next:
the time of that call is the cost of one dispatch. The dispatcher re-orders the whole queue at most every
`refresh_s` (new segments are inserted at their place meanwhile); that re-order is timed separately.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.output import command_line, save_figure, write_results
from runtime.agents.costmodel import LLAMA3_8B_A100, LLAMA3_8B_H100, LLAMA3_8B_H100_SHARED, DeploymentProfile
from runtime.agents.metrics import alone_s, jct_summary, summarize
from runtime.agents.sim import simulate
from runtime.agents.trace import generate, jobs_from_table
from runtime.engine.job_hints import SegmentOutcome
from runtime.serving.dispatch import Dispatcher, EngineShape

ARRANGEMENTS = {"rr+astraea": ("round_robin", "astraea"), "ll+astraea": ("least_loaded", "astraea"),
                "autellix+plas": ("autellix", "plas"), "autellix+astraea": ("autellix", "astraea"),
                "global+astraea": ("global", "astraea")}
BOUND = "no-contention bound"  # `--bound`: a floor no arrangement of this fleet can reach, not an arrangement
BEST_KIND = "global+astraea, best-kind fleet"  # `--best-kind`: the same fleet without its imbalance, a reference
PER_ENGINE = ("rr+astraea", "ll+astraea", "autellix+plas", "autellix+astraea")
FLEETS = {"h100": (LLAMA3_8B_H100,), "mixed": (LLAMA3_8B_H100, LLAMA3_8B_A100),  # engine i is kinds[i % len]
          "kv": (LLAMA3_8B_H100, LLAMA3_8B_H100_SHARED)}
RATES = {"swe": 1.0, "infercept": 10.0, "bfcl": 8.0}  # jobs/s per engine: the loaded regime of bench.jct_sim


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.jct_cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixes", default="swe,infercept")
    p.add_argument("--engines", default="8,64")
    p.add_argument("--jobs-per-engine", type=int, default=60)
    p.add_argument("--rates-per-engine", default="", help="mix=rate,... (default: swe=1,infercept=10,bfcl=8)")
    p.add_argument("--arrangements", default=",".join(ARRANGEMENTS))
    p.add_argument("--fleet", default="h100", choices=sorted(FLEETS), help="the engines' hardware")
    p.add_argument("--bound", action="store_true",
                   help="also run the no-contention bound: every job alone on an engine of the fleet's fastest kind")
    p.add_argument("--best-kind", action="store_true",
                   help="also run the global queue with every engine of the fleet's best kind (several kinds)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--ready", type=int, default=10_000, help="waiting segments for the decision-cost test")
    p.add_argument("--dispatches", type=int, default=200)
    p.add_argument("--out", default="results.json")
    a = p.parse_args(argv)
    a.mix_list = [m for m in a.mixes.split(",") if m]
    a.engine_list = [int(x) for x in a.engines.split(",") if x]
    a.seed_list = [int(x) for x in a.seeds.split(",") if x]
    a.arr_list = [x for x in a.arrangements.split(",") if x]
    bad = [x for x in a.arr_list if x not in ARRANGEMENTS]
    if bad:
        p.error(f"unknown arrangement(s) {bad}; choose from {', '.join(ARRANGEMENTS)}")
    if a.best_kind and best_kind(FLEETS[a.fleet]) is None:
        p.error(f"--best-kind: the {a.fleet} fleet has no kind as fast and as roomy as every other (or only one kind)")
    a.rates = dict(RATES)
    for kv in filter(None, a.rates_per_engine.split(",")):
        mix, rate = kv.split("=")
        a.rates[mix] = float(rate)
    return a


def step_s(kind: DeploymentProfile) -> float:
    """A kind's decode step at a typical batch: what `--bound` and `--best-kind` call its speed."""
    return kind.cost.decode_s_per_token(64, 2048)


def best_kind(kinds: tuple[DeploymentProfile, ...]) -> DeploymentProfile | None:
    """The kind of a fleet of several that is as fast as any other and has as much KV room as any; None if none
    is both, or the fleet has one kind."""
    if len(set(kinds)) < 2:
        return None
    return next((k for k in kinds if all(step_s(k) <= step_s(o) and k.gpu_kv_tokens >= o.gpu_kv_tokens
                                         for o in kinds)), None)


def run_sweep(a) -> list[dict]:
    rows = []
    arrs = a.arr_list + [BOUND] * a.bound + [BEST_KIND] * a.best_kind
    specs = [(m, n, s, arr) for m in a.mix_list for n in a.engine_list for s in a.seed_list for arr in arrs]
    for mix, n, seed, arr in tqdm(specs, desc="simulations", unit="run", file=sys.stderr):
        table = generate(mix, a.jobs_per_engine * n, a.rates[mix] * n, seed)
        kinds = FLEETS[a.fleet]
        t0 = time.perf_counter()
        if arr == BOUND:  # each job alone on an idle engine of the fastest kind: only its own steps and tools delay it
            fastest = min(kinds, key=step_s)
            jcts = np.array(list(alone_s(jobs_from_table(table), fastest).values()))
            row = {"jobs": len(jcts), **jct_summary(jcts), "preemptions": 0, "recompute_frac": 0.0,
                   "load": a.rates[mix], "seed": seed, "sim_wall_s": time.perf_counter() - t0}
            row.update(mix=mix, engines=n, arrangement=arr)
            rows.append(row)
            continue
        placement, policy = ARRANGEMENTS["global+astraea" if arr == BEST_KIND else arr]
        fleet = [best_kind(kinds)] * n if arr == BEST_KIND else [kinds[i % len(kinds)] for i in range(n)]
        res = simulate(jobs_from_table(table), LLAMA3_8B_H100, policy, engines=n, placement=placement, fleet=fleet)
        row = summarize(res, load=a.rates[mix], seed=seed)
        row.update(mix=mix, engines=n, arrangement=arr, sim_wall_s=time.perf_counter() - t0)
        rows.append(row)
    return rows


def decision_cost(ready: int, dispatches: int, engines: int = 64, seed: int = 0) -> dict:
    """Per-dispatch time of the real dispatcher with `ready` segments waiting (every engine full)."""
    rng = random.Random(seed)
    infos = [EngineShape(f"e{i}", 1 << 20, 32, 64, 131072) for i in range(engines)]
    d = Dispatcher(infos, "astraea", max_queue=ready + engines * 64 + 1)
    running = []
    for i in range(engines * 64):  # fill every sequence slot
        running.append(d.submit(f"run{i}", rng.randint(100, 4000), rng.randint(10, 500)))
    d.grant()
    for i in range(ready):
        d.submit(f"wait{i}", rng.randint(100, 4000), rng.randint(10, 500), rng.choice(("search", "code", "")))
    def dispatch(k: int, reorder: bool) -> float:
        d.finish(running[k], SegmentOutcome(100, 1.0))  # the predictor learns from it: cached response ratios are stale
        if reorder:
            d.queue.invalidate()
        t0 = time.perf_counter()
        [g] = d.grant()
        took = time.perf_counter() - t0
        running.append(g.ticket)
        d.submit(f"more{k}", rng.randint(100, 4000), rng.randint(10, 500))  # keep `ready` waiting
        return took * 1e3

    ms = np.array([dispatch(k, False) for k in range(dispatches)])
    full = np.array([dispatch(dispatches + k, True) for k in range(10)])
    return {"ready": ready, "engines": engines, "dispatches": dispatches, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "reorder_ms": float(np.median(full)), "refresh_s": d.refresh_s}


def markdown(data: dict) -> str:
    fleet = " + ".join(p.name for p in FLEETS[data["meta"].get("fleet", "h100")])
    lines = [f"Command: `{data['meta']['command']}`", "", f"Engines: {fleet} (alternating).", "",
             "| mix | engines | seed | arrangement | jobs | avg JCT (s) | p99 (s) | avg / best per-engine "
             "| preemptions | recompute frac | sim wall (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = data["rows"]
    for r in sorted(rows, key=lambda r: (r["mix"], r["engines"], r["seed"], r["arrangement"])):
        best = min((x["avg_jct_s"] for x in rows if x["mix"] == r["mix"] and x["engines"] == r["engines"]
                    and x["seed"] == r["seed"] and x["arrangement"] in PER_ENGINE), default=float("nan"))
        lines.append(f"| {r['mix']} | {r['engines']} | {r['seed']} | {r['arrangement']} | {r['jobs']} | "
                     f"{r['avg_jct_s']:.2f} | "
                     f"{r['p99_jct_s']:.2f} | {r['avg_jct_s'] / best:.3f} | {r['preemptions']} | "
                     f"{r['recompute_frac']:.3f} | {r['sim_wall_s']:.1f} |")
    c = data["decision_cost"]
    lines += ["", f"Decision cost (real dispatcher, astraea, {c['engines']} engines, {c['ready']} ready segments, "
              f"{c['dispatches']} single dispatches): p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms, "
              f"mean {c['mean_ms']:.2f} ms from the cached order; a full re-order (done at most every "
              f"{c['refresh_s']:g} s) takes {c['reorder_ms']:.1f} ms."]
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    groups = sorted({(r["mix"], r["engines"]) for r in rows})
    arrs = [a for a in (*ARRANGEMENTS, BEST_KIND, BOUND) if any(r["arrangement"] == a for r in rows)]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 4))
    width = 0.8 / len(arrs)
    for k, arr in enumerate(arrs):
        ys = [np.mean([r["avg_jct_s"] for r in rows if (r["mix"], r["engines"]) == g and r["arrangement"] == arr])
              for g in groups]
        ax.bar(np.arange(len(groups)) + k * width, ys, width, label=arr)
    ax.set_xticks(np.arange(len(groups)) + width * (len(arrs) - 1) / 2, [f"{m}\n{n} engines" for m, n in groups])
    ax.set_ylabel("average JCT (s)")
    kinds = FLEETS[data["meta"].get("fleet", "h100")]
    ax.set_title(f"Cluster arrangements (simulated, {' + '.join(p.name for p in kinds)})")
    ax.legend(fontsize=7)
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    rows = run_sweep(a)
    cost = decision_cost(a.ready, a.dispatches)
    data = {"meta": {"command": command_line("bench.jct_cluster", argv), "profile": LLAMA3_8B_H100.name,
                     "fleet": a.fleet, "rates_per_engine": a.rates}, "rows": rows, "decision_cost": cost}
    print(write_results(a.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
