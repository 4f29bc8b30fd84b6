"""Job completion time on a real vLLM engine (CPU build here, the `vllm` wheel on GPU nodes).

    python -m bench.jct_real --trace FILE --model small --policies vllm,astraea --rate-scales 1,4 --seeds 0 \\
        --tool-time-scale 0.1 --kv-blocks 256 --out results.json

`vllm` is unmodified vLLM as users run it (FCFS, prefix caching on, every segment a new request with the full
context). Any `runtime.agents` policy name runs the same engine with the PolicyScheduler plugin ordering the
waiting queue with that policy. The KV pool is capped with --kv-blocks (vLLM's num_gpu_blocks_override) so memory
pressure is real. Current scope: every segment resubmits the job's full context (discard + prefix cache); the
preserve / swap paths of the KV manager are not wired to the real engine yet. Writes the JSON rows (the jct_sim
row schema, measured fields only), a Markdown table and plots beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.jct_sim import plot
from runtime.agents.metrics import jct_summary
from runtime.agents.policy import POLICIES
from runtime.agents.trace import jobs_from_table, read_trace
from runtime.engine.replay import fit_to_context, replay
from runtime.engine.tiny_model import PRESETS
from runtime.engine.vllm_engine import EngineConfig, VllmEngine


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
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--out", default="results.json")
    args = p.parse_args(argv)
    args.policy_list = [x for x in args.policies.split(",") if x]
    bad = [x for x in args.policy_list if x != "vllm" and x not in POLICIES]
    if bad:
        p.error(f"--policies: unknown {bad}; choose vllm or one of {', '.join(POLICIES)}")
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
    return args


async def _run_policy(args, policy: str, table) -> list[tuple[dict, list[float]]]:
    cfg = EngineConfig(model=args.model_dir, plugin="steplog" if policy == "vllm" else "policy",
                       policy="fcfs" if policy == "vllm" else policy, kv_blocks=args.kv_blocks,
                       max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs)
    engine = VllmEngine(cfg).start()
    vocab = json.loads((Path(args.model_dir) / "config.json").read_text())["vocab_size"]
    results = []
    try:
        for seed in args.seed_list:
            for scale in args.scale_list:
                jobs = fit_to_context(jobs_from_table(table, rate_scale=scale), args.max_model_len)
                await engine.reset_prefix_cache()
                t0 = time.monotonic()
                with tqdm(total=len(jobs), desc=f"{policy} load {scale:g} seed {seed}", unit="job",
                          file=sys.stderr) as bar:
                    res = await replay(engine.generate, jobs, vocab=vocab, tool_time_scale=args.tool_time_scale,
                                       hints=policy != "vllm", on_done=lambda _: bar.update(1))
                wall = time.monotonic() - t0
                jcts = [r.jct_s for r in res]
                row = {"policy": policy, "load": scale, "seed": seed, "jobs": len(res), **jct_summary(np.array(jcts)),
                       "throughput_jobs_s": len(res) / wall, "output_tokens": sum(r.output_tokens for r in res),
                       "tokens_per_s": sum(r.output_tokens for r in res) / wall, "wall_s": wall,
                       "model": args.model, "kv_blocks": args.kv_blocks, "tool_time_scale": args.tool_time_scale}
                print(f"{policy:10s} load {scale:g} seed {seed}: avg JCT {row['avg_jct_s']:.2f} s, "
                      f"p99 {row['p99_jct_s']:.2f} s", file=sys.stderr, flush=True)
                results.append((row, jcts))
    finally:
        engine.shutdown()
    return results


def markdown(rows: list[dict], command: str) -> str:
    base = {(r["load"], r["seed"]): r for r in rows if r["policy"] == "vllm"}
    lines = [f"Command: `{command}`", "", "| load | seed | policy | jobs | avg JCT (s) | p50 | p99 | avg / vllm | "
             "p99 / vllm | output tok/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["load"], r["seed"], r["policy"] != "vllm", r["policy"])):
        b = base.get((r["load"], r["seed"]))
        ratio = f"{r['avg_jct_s'] / b['avg_jct_s']:.3f}" if b else "-"
        p99r = f"{r['p99_jct_s'] / b['p99_jct_s']:.3f}" if b else "-"
        lines.append(f"| {r['load']:g} | {r['seed']} | {r['policy']} | {r['jobs']} | {r['avg_jct_s']:.2f} | "
                     f"{r['p50_jct_s']:.2f} | {r['p99_jct_s']:.2f} | {ratio} | {p99r} | {r['tokens_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.jct_real " + " ".join(argv if argv is not None else sys.argv[1:])
    table = read_trace(args.trace)
    rows, cdfs = [], {}
    for policy in args.policy_list:
        for row, jcts in asyncio.run(_run_policy(args, policy, table)):
            rows.append(row)
            if row["load"] == max(args.scale_list) and row["seed"] == args.seed_list[0]:
                cdfs[(policy, "oracle")] = jcts
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"command": command, "trace": args.trace, "model": args.model}, "rows": rows},
                              indent=1))
    md = markdown(rows, command)
    out.with_suffix(".md").write_text(md)
    agg = [{"policy": r["policy"], "estimator": "oracle", "load": r["load"], "avg_jct_s": r["avg_jct_s"]}
           for r in rows if r["seed"] == args.seed_list[0]]
    plot(agg, cdfs, out.with_suffix(""), f"real vLLM ({args.model})")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
