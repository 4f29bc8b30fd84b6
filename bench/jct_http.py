"""Job completion time through the served HTTP API: agent clients replay a trace against the Serve app.

    python -m bench.jct_http --trace FILE --model small --policies vllm,astraea --rate-scales 4 \\
        --tool-time-scale 0.1 --kv-blocks 256 --out results.json

For each policy the whole service is started on a local Ray (GlobalScheduler, engine actors, Serve ingress), then
every job of the trace is one agent session driven with the official `openai` client: it arrives at its
(rate-scaled) arrival time, sends each segment as a chat call whose new message has the segment's prompt tokens
(random token ids rendered as text, so the count is approximate after re-tokenisation) and asks for exactly its
output tokens (`ignore_eos`), waits `api_time_s x tool-time-scale` for its tool, and closes its session at the
end. `vllm` is unmodified vLLM engines behind a FCFS global queue; any `runtime.agents` policy runs the
GlobalScheduler and the engines' plugin with it. Rows follow the other JCT benchmarks' schema, plus the HTTP errors
seen and the engines' KV decisions read from `/metrics`.

    python -m bench.jct_http --trace FILE --model small --url http://head:8000 --rate-scales 4 --out results.json

replays the trace against a service that is already running (a cluster started with `ray up`, say) instead: one
row per load, under the policy that service runs.
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

from bench.jct_sim import plot as jct_plot
from bench.output import command_line, write_results
from runtime.agents.job import Job
from runtime.agents.metrics import jct_summary
from runtime.agents.trace import jobs_from_table, read_trace
from runtime.engine.replay import fit_to_context, prompt_ids
from runtime.serving.agent_client import AgentResult, Turn, run_agent
from runtime.serving.config import ServeSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.jct_http", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True)
    p.add_argument("--model", default="small", help="a preset built by `make model` (models/NAME) or a directory")
    p.add_argument("--policies", default="vllm,astraea")
    p.add_argument("--rate-scales", default="4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tool-time-scale", type=float, default=0.1)
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--kv-blocks", type=int, default=None, help="cap each engine's KV pool (blocks of 32 tokens)")
    p.add_argument("--host-swap-blocks", type=int, default=1024)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--url", default=None,
                   help="replay against this running service instead of starting one per policy: its policy, engines "
                        "and context length are what it runs (read from /v1/cluster); --policies, --engines and the "
                        "engine settings are not used")
    p.add_argument("--out", default="results.json")
    args = p.parse_args(argv)
    args.model_dir = args.model if Path(args.model).is_dir() else str(Path("models") / args.model)
    args.policy_list = [x for x in args.policies.split(",") if x]
    args.scale_list = [float(x) for x in args.rate_scales.split(",")]
    for policy in args.policy_list:  # a bad name fails here, before any service starts
        ServeSettings(model=args.model_dir, policy=policy)
    return args


def text_maker(model_dir: str):
    """`text_of(job_id, seg, n)`: a segment's prompt as text of about `n` tokens of the model's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]

    def text_of(job_id: str, seg: int, n: int) -> str:
        """Random ids, re-tokenised until the count holds (or close: a few passes)."""
        ids = prompt_ids(job_id, seg, n, vocab)
        for _ in range(4):
            text = tok.decode(ids, skip_special_tokens=True)
            again = tok.encode(text, add_special_tokens=False)
            if len(again) == n:
                break
            ids = again[:n]
        return text

    return text_of


def round_trip_ids(model_dir: str) -> list[int]:
    """The tokens a replay's answers are drawn from: whole words (a space, then ASCII letters), whose text
    re-tokenises to the same ids in any sequence. A chat client sends each answer back as text in the next call,
    and a server that re-renders the conversation (vLLM's own) finds the answer's KV again only if the text gives
    the same tokens. A trained model's text nearly always does; a random-weight model's random ids do not (in
    300 random ids of the `small` tokenizer only the first 5-32 survive decoding and encoding again), which
    would leave every earlier answer's KV unreachable there for a reason no real deployment has."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(model_dir).get_vocab()
    return sorted(i for piece, i in vocab.items()
                  if len(piece) > 2 and piece[0] == "\u0120" and piece[1:].isascii() and piece[1:].isalpha())


def turns_of(job: Job, text_of, tool_time_scale: float) -> list[Turn]:
    return [Turn(text_of(job.job_id, s.index, s.prompt_tokens), s.output_tokens, s.api_category,
                 s.api_time_s * tool_time_scale) for s in job.segments]


async def replay_http(url: str, model: str, jobs: list[Job], text_of, tool_time_scale: float, desc: str,
                      session_api: bool = True, on_call=None,
                      answer_ids: list[int] | None = None) -> tuple[list[AgentResult], list[float], int]:
    """Every job as one session, arriving on schedule; returns results, JCTs and the count of failed calls.
    `session_api`: as `run_agent`'s; `on_call(job_id, prompt_tokens, completion_tokens)` hears every finished call;
    `answer_ids`: the tokens answers are made of (`round_trip_ids`)."""
    from openai import APIError, AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600)
    start = time.monotonic()
    errors = 0

    async def one(job: Job, bar) -> tuple[AgentResult | None, float]:
        nonlocal errors
        await asyncio.sleep(max(0.0, job.arrival_s - (time.monotonic() - start)))
        try:
            res = await run_agent(client, model, job.job_id, turns_of(job, text_of, tool_time_scale),
                                  ignore_eos=True, session_api=session_api,
                                  on_call=on_call and (lambda p, c: on_call(job.job_id, p, c)),
                                  allowed_token_ids=answer_ids)
        except APIError as e:
            errors += 1
            print(f"{job.job_id}: {e}", file=sys.stderr)
            return None, float("nan")
        finally:
            bar.update(1)
        return res, time.monotonic() - start - job.arrival_s

    async with client:  # closed on this event loop (asyncio.run closes it afterwards)
        with tqdm(total=len(jobs), desc=desc, unit="job", file=sys.stderr) as bar:
            done = await asyncio.gather(*(one(j, bar) for j in jobs))
    results = [r for r, _ in done if r is not None]
    jcts = [t for r, t in done if r is not None]
    return results, jcts, errors


def kv_decisions(metrics_text: str) -> dict[str, int]:
    counts = {"kv_preserve": 0, "kv_swap": 0, "kv_discard": 0, "kv_released": 0}
    for line in metrics_text.splitlines():
        if line.startswith("agentriver_kv_decisions_total{"):
            labels = dict(kv.split("=") for kv in line[line.index("{") + 1:line.index("}")].split(","))
            action, cause = labels["action"].strip('"'), labels["cause"].strip('"')
            key = f"kv_{action}" if cause == "tool_call" else "kv_released"
            counts[key] += int(float(line.split()[-1]))
    return counts


def run_policy(args, policy: str, loads: dict[float, list[Job]], text_of) -> list[tuple[dict, list[float]]]:
    """A service of this policy started on this machine, the loads replayed through it, and the service stopped."""
    from deployments.launch import start, stop

    settings = ServeSettings(model=args.model_dir, policy=policy, engines=args.engines,
                             max_queue=100_000, engine={"kv_blocks": args.kv_blocks,
                                                        "max_model_len": args.max_model_len,
                                                        "max_num_seqs": args.max_num_seqs,
                                                        "host_swap_blocks": args.host_swap_blocks})
    url = start(settings, args.port)
    try:
        return replay_loads(args, url, settings.served_model_name, policy, loads, text_of)
    finally:
        stop(settings)


def running_service(url: str) -> tuple[str, dict]:
    """The served model's name and the cluster view (policy, engines, max_model_len) of a service already running."""
    import httpx

    [model] = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
    return model, httpx.get(f"{url}/v1/cluster", timeout=30).json()


def replay_loads(args, url: str, model: str, policy: str, loads: dict[float, list[Job]],
                 text_of) -> list[tuple[dict, list[float]]]:
    import httpx

    rows = []
    for scale, jobs in loads.items():
        before = kv_decisions(httpx.get(f"{url}/metrics", timeout=30).text)
        t0 = time.monotonic()
        results, jcts, errors = asyncio.run(replay_http(url, model, jobs, text_of, args.tool_time_scale,
                                                        f"{policy} load {scale:g}"))
        wall = time.monotonic() - t0
        time.sleep(2.5)  # engines report their KV logs to the scheduler every second
        after = kv_decisions(httpx.get(f"{url}/metrics", timeout=30).text)
        tokens = sum(r.completion_tokens for r in results)
        row = {"policy": policy, "load": scale, "seed": args.seed, "jobs": len(results),
               **jct_summary(np.array(jcts)), "throughput_jobs_s": len(results) / wall,
               "output_tokens": tokens, "tokens_per_s": tokens / wall, "wall_s": wall, "http_errors": errors,
               "model": args.model, "engines": args.engines, "kv_blocks": args.kv_blocks,
               "tool_time_scale": args.tool_time_scale,
               "queued_s_avg": float(np.mean([s["queued_s"] for r in results for s in r.view["segment_log"]])),
               **{k: after[k] - before[k] for k in after}}
        print(f"{policy:10s} load {scale:g}: avg JCT {row['avg_jct_s']:.2f} s, p99 {row['p99_jct_s']:.2f} s, "
              f"{errors} HTTP errors", file=sys.stderr, flush=True)
        rows.append((row, jcts))
    return rows


def markdown(data: dict) -> str:
    rows = data["rows"]
    base = {r["load"]: r for r in rows if r["policy"] == "vllm"}
    lines = [f"Command: `{data['meta']['command']}`", "",
             "| load | policy | jobs | avg JCT (s) | p50 | p99 | avg / vllm | p99 / vllm | output tok/s | "
             "queued per segment (s) | preserve/swap/discard/released | HTTP errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["load"], r["policy"] != "vllm", r["policy"])):
        b = base.get(r["load"])
        ratio = f"{r['avg_jct_s'] / b['avg_jct_s']:.3f}" if b else "-"
        p99r = f"{r['p99_jct_s'] / b['p99_jct_s']:.3f}" if b else "-"
        kv = "/".join(str(r[k]) for k in ("kv_preserve", "kv_swap", "kv_discard", "kv_released"))
        lines.append(f"| {r['load']:g} | {r['policy']} | {r['jobs']} | {r['avg_jct_s']:.2f} | {r['p50_jct_s']:.2f} | "
                     f"{r['p99_jct_s']:.2f} | {ratio} | {p99r} | {r['tokens_per_s']:.1f} | "
                     f"{r['queued_s_avg']:.3f} | {kv} | {r['http_errors']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = read_trace(args.trace)
    text_of = text_maker(args.model_dir)
    if args.url:
        model, cluster = running_service(args.url)
        args.engines, args.max_model_len, args.kv_blocks = len(cluster["engines"]), cluster["max_model_len"], None
    # The chat template and re-tokenisation add a little: keep 20% of the context free.
    loads = {scale: fit_to_context(jobs_from_table(table, rate_scale=scale), int(args.max_model_len * 0.8))
             for scale in args.scale_list}

    if args.url:
        runs = {cluster["policy"]: replay_loads(args, args.url, model, cluster["policy"], loads, text_of)}
    else:
        runs = {policy: run_policy(args, policy, loads, text_of) for policy in args.policy_list}
    rows, cdfs = [], {}
    for policy, replayed in runs.items():
        for row, jcts in replayed:
            rows.append(row)
            if row["load"] == max(args.scale_list):
                cdfs[(policy, "oracle")] = jcts
    data = {"meta": {"command": command_line("bench.jct_http", argv), "trace": args.trace, "model": args.model,
                     "engines": args.engines, "max_model_len": args.max_model_len, "url": args.url}, "rows": rows}

    def plot(d: dict, stem: Path) -> None:
        agg = [{"policy": r["policy"], "estimator": "oracle", "load": r["load"], "avg_jct_s": r["avg_jct_s"]}
               for r in d["rows"]]
        jct_plot(agg, cdfs, stem, f"HTTP API, real vLLM ({args.model})")

    print(write_results(args.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
