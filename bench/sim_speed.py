"""How long the simulator takes: one long trace at the heaviest load of `make bench`, every policy, one at a time.

    python -m bench.sim_speed --workloads swe:0.5:8,infercept:5:8,bfcl:2.5:16 --jobs 2000 \\
        --out bench/results/sim_speed.json

Each workload is `mix:rate:load`: a trace of `--jobs` jobs generated at `rate` jobs/s, replayed at `load` times
that rate (the defaults are bench.reproduce's heaviest load per mix). Each policy's run is timed alone in this
process, wall and CPU seconds, so nothing else should run beside it. Target (bench.targets, issue 17): every
policy's run <= 20 s wall on this machine. The policies' own results are bench.jct_sim's business, not this one's;
the table shows the average JCT only so that a speed change that moved a result is seen.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.output import command_line, save_figure, write_results
from runtime.agents.costmodel import PROFILES, get_profile
from runtime.agents.policy import POLICIES
from runtime.agents.sim import simulate
from runtime.agents.trace import MIXES, generate, jobs_from_table

TARGET_S = 20.0


def parse_workload(text: str) -> tuple[str, float, float]:
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--workloads: {text!r} is not mix:rate:load")
    mix, rate, load = parts
    if mix not in MIXES:
        raise argparse.ArgumentTypeError(f"--workloads: unknown mix {mix!r} in {text!r}; choose from {sorted(MIXES)}")
    try:
        rate_v, load_v = float(rate), float(load)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workloads: {text!r} is not mix:rate:load (rate, load numbers)") from None
    if not (rate_v > 0 and load_v > 0):
        raise argparse.ArgumentTypeError(f"--workloads: rate and load must be > 0 in {text!r}")
    return mix, rate_v, load_v


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sim_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="swe:0.5:8,infercept:5:8,bfcl:2.5:16,mixed:0.5:8", help="mix:rate:load,...")
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="llama3-8b-h100", choices=sorted(PROFILES))
    p.add_argument("--out", default="results.json")
    args = p.parse_args(argv)
    try:
        args.workload_list = [parse_workload(w) for w in args.workloads.split(",") if w]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    args.policy_list = [x for x in args.policies.split(",") if x]
    unknown = sorted(set(args.policy_list) - set(POLICIES))
    if unknown:
        p.error(f"--policies: unknown {unknown}; choose from {sorted(POLICIES)}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def run(args: argparse.Namespace) -> list[dict]:
    profile, rows = get_profile(args.model), []
    for mix, rate, load in args.workload_list:
        table = generate(mix, args.jobs, rate, args.seed)
        for policy in args.policy_list:
            jobs = jobs_from_table(table, rate_scale=load)
            wall, cpu = time.perf_counter(), time.process_time()
            result = simulate(jobs, profile, policy)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rows.append({"mix": mix, "rate": rate, "load": load, "jobs": args.jobs, "policy": policy,
                         "wall_s": wall, "cpu_s": cpu, "avg_jct_s": float(np.mean([j.jct_s for j in result.jobs]))})
            print(f"{mix} x{load:g} {policy}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    return rows


def targets(data: dict) -> list[dict]:
    return [{"name": f"{r['mix']} x{r['load']:g}, {r['jobs']} jobs, {r['policy']}: {r['wall_s']:.1f} s wall "
                     f"(target <= {TARGET_S:g})", "met": r["wall_s"] <= TARGET_S} for r in data["timings"]]


def markdown(data: dict) -> str:
    lines = [f"Command: `{data['meta']['command']}`", "",
             f"One run at a time in one process; target <= {TARGET_S:g} s wall per run.", "",
             "| mix | rate (jobs/s) | load | jobs | policy | wall (s) | CPU (s) | avg JCT (s) | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r, t in zip(data["timings"], data["targets"], strict=True):
        lines.append(f"| {r['mix']} | {r['rate']:g} | {r['load']:g} | {r['jobs']} | {r['policy']} | "
                     f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['avg_jct_s']:.2f} | "
                     f"{'met' if t['met'] else 'missed'} |")
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = list(dict.fromkeys(r["mix"] for r in data["timings"]))
    policies = list(dict.fromkeys(r["policy"] for r in data["timings"]))
    wall = {(r["mix"], r["policy"]): r["wall_s"] for r in data["timings"]}
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(policies) * max(len(mixes), 1) / 2, 3.6))
    width = 0.8 / max(len(mixes), 1)
    for i, mix in enumerate(mixes):
        ax.bar([k + i * width for k in range(len(policies))], [wall.get((mix, p), 0.0) for p in policies],
               width, label=mix)
    ax.axhline(TARGET_S, color="k", ls="--", lw=1, label=f"target {TARGET_S:g} s")
    ax.set_xticks([k + width * (len(mixes) - 1) / 2 for k in range(len(policies))], policies, rotation=30)
    ax.set_ylabel("simulator wall (s)")
    ax.set_title(f"{data['timings'][0]['jobs'] if data['timings'] else 0} jobs at the heaviest load")
    ax.legend(fontsize=8)
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = {"meta": {"command": command_line("bench.sim_speed", argv), "model": args.model, "seed": args.seed},
            "timings": run(args)}
    data["targets"] = targets(data)
    print(write_results(args.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
