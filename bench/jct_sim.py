"""Simulated job-completion-time benchmark: policies x loads x seeds on the cost-model engine.

    python -m bench.jct_sim --mix infercept --jobs 1000 --rate 10 \\
        --policies fcfs,sjf,plas,infercept,continuum,astraea --rate-scales 0.5,1,2,4 --seeds 0,1,2 \\
        --out bench/results/jct_sim_infercept.json

Writes the JSON rows, a Markdown table beside them (same stem, .md) and two plots (average JCT vs load per
policy; JCT CDF at the heaviest load). With --mix, each seed generates its own trace; with --trace the file is
replayed as is (the simulator is deterministic, so one seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from runtime.agents.costmodel import PROFILES, get_profile
from runtime.agents.metrics import alone_s, summarize
from runtime.agents.policy import POLICIES, make_config
from runtime.agents.predictor import OUTPUT_ESTIMATORS
from runtime.agents.sim import PLACEMENTS, simulate
from runtime.agents.trace import MIXES, generate, jobs_from_table, read_trace

QUICK = dict(mix="infercept", jobs=800, rate=10.0, rate_scales="0.5,1,2,4", seeds="0")


@dataclass(frozen=True)
class RunSpec:
    policy: str
    load: float
    seed: int
    estimator: str


def _csv(p: argparse.ArgumentParser, kind, text: str, name: str) -> list:
    try:
        vals = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        p.error(f"--{name}: cannot parse '{text}' ({e})")
    if not vals:
        p.error(f"--{name}: empty list")
    return vals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.jct_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--trace", help="Parquet trace file (the public schema)")
    src.add_argument("--mix", choices=sorted(MIXES), help="generate a trace of this mix")
    p.add_argument("--jobs", type=int, default=1000, help="jobs per generated trace")
    p.add_argument("--rate", type=float, default=10.0, help="arrival rate (jobs/s) of generated traces at load 1")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--rate-scales", default="0.5,1,2,4", help="each divides arrival times (2 = twice the load)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--model", default="llama3-8b-h100", choices=sorted(PROFILES))
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--placement", default="round_robin", choices=PLACEMENTS)
    p.add_argument("--output-estimator", default="oracle",
                   help=f"comma list of {OUTPUT_ESTIMATORS}: how the predictor gets n_gen")
    p.add_argument("--kv-tokens", type=int, default=None, help="override the GPU KV capacity (tokens)")
    p.add_argument("--policy-config", action="append", default=[], metavar="POLICY.FIELD=VALUE",
                   help="override a policy config field, e.g. astraea.high_watermark=0.8 (repeatable)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--quick", action="store_true", help=f"small default sweep for `make run`: {QUICK}")
    p.add_argument("--out", default="results.json")
    args = p.parse_args(argv)
    if args.quick:
        if not args.trace:
            args.mix = args.mix or QUICK["mix"]
        args.jobs, args.rate, args.rate_scales, args.seeds = (QUICK[k] for k in ("jobs", "rate", "rate_scales",
                                                                                "seeds"))
    if not args.trace and not args.mix:
        p.error("give --trace FILE or --mix NAME (or --quick)")
    args.policy_list = _csv(p, str, args.policies, "policies")
    bad = [x for x in args.policy_list if x not in POLICIES]
    if bad:
        p.error(f"--policies: unknown {bad}; choose from {', '.join(POLICIES)}")
    args.scale_list = _csv(p, float, args.rate_scales, "rate-scales")
    if any(s <= 0 for s in args.scale_list):
        p.error("--rate-scales: every scale must be > 0")
    args.seed_list = _csv(p, int, args.seeds, "seeds")
    if args.trace and len(args.seed_list) > 1:
        p.error("--seeds: a --trace replay is deterministic; give one seed")
    args.estimators = _csv(p, str, args.output_estimator, "output-estimator")
    bad = [x for x in args.estimators if x not in OUTPUT_ESTIMATORS]
    if bad:
        p.error(f"--output-estimator: unknown {bad}; choose from {OUTPUT_ESTIMATORS}")
    args.overrides = {}
    for item in args.policy_config:
        name, _, value = item.partition("=")
        pol, _, fld = name.partition(".")
        if not value or not fld:
            p.error(f"--policy-config: expected POLICY.FIELD=VALUE, got '{item}'")
        args.overrides.setdefault(pol, {})[fld] = value
    for pol, ov in args.overrides.items():
        try:
            make_config(pol, ov)
        except ValueError as e:
            p.error(f"--policy-config: {e}")
    if args.jobs < 1 or args.rate <= 0 or args.engines < 1:
        p.error("--jobs and --engines must be >= 1 and --rate > 0")
    return args


_TABLES: dict[tuple, pa.Table] = {}


def _table(args: argparse.Namespace, seed: int) -> pa.Table:
    """The trace of `seed`, kept for the process: every run of a sweep replays it. Keyed by all that makes the
    trace, since `bench.reproduce` sweeps several mixes in one process."""
    key = (args.trace, args.mix, args.jobs, args.rate, seed)
    table = _TABLES.get(key)
    if table is None:
        table = read_trace(args.trace) if args.trace else generate(args.mix, args.jobs, args.rate, seed)
        _TABLES[key] = table
    return table


def _profile(args: argparse.Namespace):
    profile = get_profile(args.model)
    return profile.with_kv_tokens(args.kv_tokens) if args.kv_tokens else profile


def _run(args: argparse.Namespace, spec: RunSpec, alone: dict[str, float]) -> tuple[dict, list[float]]:
    jobs = jobs_from_table(_table(args, spec.seed), rate_scale=spec.load)
    result = simulate(jobs, _profile(args), spec.policy, engines=args.engines, placement=args.placement,
                      output_estimator=spec.estimator, policy_config=args.overrides.get(spec.policy))
    row = summarize(result, load=spec.load, seed=spec.seed, alone=alone)
    row.update(estimator=spec.estimator, model=args.model, engines=args.engines, placement=args.placement,
               workload=args.trace or args.mix, policy_config=args.overrides.get(spec.policy, {}))
    return row, [j.jct_s for j in result.jobs]


def run_sweep(args: argparse.Namespace) -> tuple[list[dict], dict]:
    specs = [RunSpec(p, s, seed, e) for seed in args.seed_list for s in args.scale_list
             for e in args.estimators for p in args.policy_list]
    rows, cdfs = [], {}
    heavy = max(args.scale_list)
    alone = {seed: alone_s(jobs_from_table(_table(args, seed)), _profile(args)) for seed in args.seed_list}
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [(spec, pool.submit(_run, args, spec, alone[spec.seed])) for spec in specs]
        for spec, fut in tqdm(futures, desc="jct_sim", unit="run", file=sys.stderr):
            row, jcts = fut.result()
            rows.append(row)
            if spec.load == heavy and spec.seed == args.seed_list[0]:
                cdfs[(spec.policy, spec.estimator)] = jcts
    return rows, cdfs


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (policy, estimator, load), with the ratio to fcfs at the same load."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["estimator"], r["load"]), []).append(r)
    out = []
    for (pol, est, load), rs in groups.items():
        agg = {"policy": pol, "estimator": est, "load": load, "seeds": len(rs)}
        for k in ("avg_jct_s", "p99_jct_s", "avg_excess_s", "p99_excess_s", "kv_waste_frac", "recompute_frac",
                  "throughput_jobs_s"):
            agg[k] = float(np.mean([r[k] for r in rs]))
        for k in ("preserve", "swap", "discard", "preemptions"):
            agg[k] = float(np.mean([r[k] for r in rs]))
        out.append(agg)
    base = {(a["estimator"], a["load"]): a for a in out if a["policy"] == "fcfs"}
    for a in out:
        b = base.get((a["estimator"], a["load"]))
        a["avg_vs_fcfs"] = a["avg_jct_s"] / b["avg_jct_s"] if b else None
        a["p99_vs_fcfs"] = a["p99_jct_s"] / b["p99_jct_s"] if b else None
    order = {p: i for i, p in enumerate(POLICIES)}
    out.sort(key=lambda a: (a["estimator"], a["load"], order.get(a["policy"], 99)))
    return out


def markdown(agg: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "Excess = JCT minus the job's time alone on an idle engine (its tool time and its compute at batch 1): "
             "the part a scheduler controls. `sjf` and `clairvoyant` are bounds that read the trace's future "
             "(segment lengths; whole jobs and tool times), not policies a server can run.", "",
             "| estimator | load | policy | avg JCT (s) | p99 JCT (s) | avg excess (s) | p99 excess (s) | avg / fcfs "
             "| p99 / fcfs | KV waste | recompute | preserve | swap | discard | preempt |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in agg:
        ratio = f"{a['avg_vs_fcfs']:.3f}" if a["avg_vs_fcfs"] is not None else "-"
        pr = f"{a['p99_vs_fcfs']:.3f}" if a["p99_vs_fcfs"] is not None else "-"
        lines.append(f"| {a['estimator']} | {a['load']:g} | {a['policy']} | {a['avg_jct_s']:.2f} | "
                     f"{a['p99_jct_s']:.2f} | {a['avg_excess_s']:.2f} | {a['p99_excess_s']:.2f} | {ratio} | {pr} | "
                     f"{a['kv_waste_frac']:.3f} | "
                     f"{a['recompute_frac']:.3f} | {a['preserve']:.0f} | {a['swap']:.0f} | {a['discard']:.0f} | "
                     f"{a['preemptions']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(agg: list[dict], cdfs: dict, stem: Path, title: str) -> list[Path]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(POLICIES) + sorted({a["policy"] for a in agg} - set(POLICIES))  # e.g. "vllm" from jct_real
    colors = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(names)}
    series = {}
    for a in agg:
        series.setdefault((a["policy"], a["estimator"]), []).append((a["load"], a["avg_jct_s"]))
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (pol, est), pts in sorted(series.items(), key=lambda kv: (names.index(kv[0][0]), kv[0][1])):
        pts.sort()
        oracle = dict(series.get((pol, "oracle"), []))
        if est != "oracle" and oracle and all(abs(y - oracle.get(x, -1)) <= 1e-3 * y for x, y in pts):
            continue  # this policy does not use the output estimate: the line would repeat the oracle one
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors.get(pol),
                linestyle="-" if est == "oracle" else "--", label=pol if est == "oracle" else f"{pol} ({est})")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    paths.append(_save(fig, ax, "load (rate scale)", "average JCT (s)", title, stem, "_jct_vs_load.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (pol, est), jcts in sorted(cdfs.items()):
        if est != "oracle":
            continue
        xs = np.sort(jcts)
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=pol, color=colors.get(pol))
    paths.append(_save(fig, ax, "JCT (s)", "CDF", title + " - heaviest load (oracle n_gen)", stem, "_cdf.png"))
    return paths


def _save(fig, ax, xlabel: str, ylabel: str, title: str, stem: Path, suffix: str) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = stem.with_name(stem.name + suffix)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.jct_sim " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    rows, cdfs = run_sweep(args)
    agg = aggregate(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    meta = {"command": command, "model": args.model, "engines": args.engines, "workload": args.trace or args.mix,
            "jobs": args.jobs if not args.trace else None, "rate": args.rate if not args.trace else None,
            "wall_s": time.perf_counter() - t0}
    out.write_text(json.dumps({"meta": meta, "rows": rows, "summary": agg}, indent=1))
    md = markdown(agg, command)
    out.with_suffix(".md").write_text(md)
    plot(agg, cdfs, stem, f"{meta['workload']} on {args.model}")
    print(md)
    print(f"wrote {out}, {out.with_suffix('.md')} and plots ({meta['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
