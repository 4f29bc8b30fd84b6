"""Astraea against vLLM's own OpenAI server as users run it: one agent trace, one client, four servers.

    python -m bench.vs_vllm_server --trace FILE --model small --pressures 0.5,2,4 --loads 1,4 \\
        --tool-time-scale 0.1 --out bench/results/vs_vllm_server.json

Servers, started one after another and afresh for every KV pool size (bench/stock_server.py has their command
lines):
  (a) `stock`            `python -m vllm.entrypoints.openai.api_server` as users type it (vLLM's defaults);
  (b) `stock_like_ours`  the same server with this runtime's engine settings (eager, 32-token blocks, 2,048 batched
                         tokens, no reserved core) and vLLM's own scheduler: FCFS, KV kept only by its prefix cache;
  (c) `drop_in`          (b) plus the policy scheduler plugin (astraea) and the host-swap KV connector;
  (d) `ray`              this project's Ray runtime (`deployments.launch`, one engine, astraea), engine settings as (b).
Every server gets the same model, context length, batch size and KV pool (in tokens), and the same client:
`runtime.serving.agent_client.run_agent` through the official `openai` client (bench.jct_http's replay), each job
one session whose calls carry `session_id` and `vllm_xargs` (its last call `last`, which ends the session on every
server: one HTTP request per call everywhere). Answers are drawn (`allowed_token_ids`, which every
server takes) from 64 whole-word tokens, whose text re-tokenises to the same ids as a trained model's text does: a
random-weight model's random tokens would not, and a server that re-renders the chat (the stock one) could then
never reuse an earlier answer's KV (`bench.jct_http.round_trip_ids`).

Memory pressure: the KV pool holds (sum of the trace's final job contexts) / pressure tokens, so pressure 4 is a
pool 4x oversubscribed if every session were live at once. Each row also reports the measured peak of the live
sessions' contexts (the servers' own usage counts, a session live from its arrival to its last answer) over the
pool. Load: the trace's arrival rate scaled. No tools: every segment of the trace as a one-call session arriving
with its job, at --notool-load on the roomiest pool, --notool-rounds times, for output tokens/s while requests wait
for a slot (`ThroughputSampler`: the servers' own token counters). The default load brings every segment within about
a second, so the server sets the pace for most of the run. Tokens over the whole run's wall time are reported too,
but they mostly time the run's end: a policy that serves short requests first leaves the longest ones to finish
last, at a small batch. The Markdown's first line is the exact command.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.jct_http import kv_decisions, replay_http, round_trip_ids, text_maker
from bench.output import command_line, save_figure, write_results
from bench.stock_server import OURS, StockServer, free_port, running
from runtime.agents.job import Job
from runtime.agents.metrics import jct_summary
from runtime.agents.trace import jobs_from_table, read_trace
from runtime.engine.replay import fit_to_context

SERVERS = ("stock", "stock_like_ours", "drop_in", "ray")
LABELS = {"stock": "(a) stock, as users run it", "stock_like_ours": "(b) stock, our engine settings, FCFS",
          "drop_in": "(c) stock + drop-in plugin (astraea)", "ray": "(d) Ray runtime (astraea)"}
BASE = "stock_like_ours"
# Whole-word tokens the replays' answers are drawn from: a short list, since every call carries it (the Ray runtime
# at pressure 0.5, load 1, in one throwaway check each: 23.15 / 23.23 s average JCT with 64, 23.46 s with all 2,915
# of the `small` tokenizer, 22.62 s without the field).
ANSWER_WORDS = 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.vs_vllm_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True)
    p.add_argument("--model", default="small", help="a preset built by `make model` (models/NAME) or a directory")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--pressures", default="0.5,2,4", help="sum of final job contexts over the KV pool")
    p.add_argument("--loads", default="1,4", help="arrival-rate scales of the trace")
    p.add_argument("--notool-load", type=float, default=64.0, help="rate scale of the no-tool run (0: none)")
    p.add_argument("--notool-rounds", type=int, default=3, help="no-tool runs on each server (medians reported)")
    p.add_argument("--tool-time-scale", type=float, default=0.1)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--host-swap-blocks", type=int, default=4096)
    p.add_argument("--logs", default="build/vs_vllm_server", help="server logs and KV logs")
    p.add_argument("--out", default="results.json")
    args = p.parse_args(argv)
    args.model_dir = args.model if Path(args.model).is_dir() else str(Path("models") / args.model)
    if not Path(args.model_dir, "config.json").exists():
        p.error(f"--model: {args.model_dir} has no config.json (build it with `make model`)")
    args.server_list = [s for s in args.servers.split(",") if s]
    for s in args.server_list:
        if s not in SERVERS:
            p.error(f"--servers: unknown server {s!r}; choose from {', '.join(SERVERS)}")
    try:
        args.pressure_list = sorted(float(x) for x in args.pressures.split(","))
        args.load_list = [float(x) for x in args.loads.split(",") if x]
    except ValueError as e:
        p.error(f"--pressures/--loads must be comma-separated numbers: {e}")
    if min(args.pressure_list) <= 0 or min(args.load_list, default=1) <= 0:
        p.error("--pressures and --loads must be > 0")
    return args


def trace_jobs(table, scale: float, tag: str, max_model_len: int, single: bool = False) -> list[Job]:
    """The trace at `scale`, job ids tagged so that one server's runs never share prompts (its prefix cache)."""
    # The chat template and re-tokenisation add a little: keep 20% of the context free (as bench.jct_http).
    jobs = fit_to_context(jobs_from_table(table, rate_scale=scale), int(max_model_len * 0.8))
    if single:  # every segment alone, arriving with its job: the same prompts and outputs, no tool calls
        jobs = [Job(f"{j.job_id}-s{s.index}", j.arrival_s, (replace(s, index=0, api_category="", api_time_s=0.0),))
                for j in jobs for s in j.segments]
    return [Job(f"{j.job_id}-{tag}", j.arrival_s, j.segments) for j in jobs]


def context_tokens(jobs: list[Job]) -> int:
    return sum(s.prompt_tokens + s.output_tokens for j in jobs for s in j.segments)


def peak_live_context(calls: list[tuple[float, str, int]], ends: dict[str, float]) -> int:
    """Peak over time of the sum of live sessions' contexts: a session holds its latest call's prompt + output
    from that call's end until the session's last answer."""
    events = sorted([(t, job, ctx) for t, job, ctx in calls] + [(t, job, 0) for job, t in ends.items()])
    held: dict[str, int] = {}
    total = peak = 0
    for _, job, ctx in events:
        total += ctx - held.get(job, 0)
        held[job] = ctx
        peak = max(peak, total)
    return peak


# vLLM's counters `scrape` reads (summed over label sets).
SCRAPED = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total")
# Per server: the counter of output tokens and the gauges whose sum is the number of requests waiting for a slot.
TOKEN_COUNTERS = ("vllm:generation_tokens", "agentriver_engine_generation_tokens")
WAITING_GAUGES = ("vllm:num_requests_waiting", "agentriver_queue_segments")


class ThroughputSampler:
    """Reads a server's output-token counter and its waiting requests every `period_s` in a thread, so that
    throughput is measured only while requests wait for a slot - the server, not the arrivals or the run's last
    long request, sets the pace then (tokens over the whole run's wall time would mostly time its tail)."""

    def __init__(self, url: str, period_s: float = 0.5):
        self.url, self.period_s = url, period_s
        self.samples: list[tuple[float, float, float]] = []  # (time, output tokens so far, requests waiting)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThroughputSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                _, samples = metric_samples(self.url)
            except httpx.HTTPError:  # one reading missed: the intervals around it are longer, none is lost
                samples = None
            if samples is not None:
                tokens = sum(s.value for s in samples if s.name.removesuffix("_total") in TOKEN_COUNTERS)
                waiting = sum(s.value for s in samples if s.name in WAITING_GAUGES or (
                    s.name == "agentriver_engine_requests" and s.labels.get("state") == "waiting"))
                self.samples.append((time.monotonic(), tokens, waiting))
            self._stop.wait(self.period_s)


def saturated_rate(samples: list[tuple[float, float, float]]) -> float | None:
    """Output tokens/s over the intervals between samples (time, tokens so far, requests waiting) that began and
    ended with requests waiting; None when there were none."""
    pairs = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(samples, samples[1:], strict=False) if a[2] > 0 and b[2] > 0]
    seconds = sum(dt for dt, _ in pairs)
    return sum(n for _, n in pairs) / seconds if seconds else None


def metric_samples(url: str) -> tuple[str, list]:
    """The server's /metrics text and its samples (prometheus_client's parser)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return text, [s for family in text_string_to_metric_families(text) for s in family.samples]


def scrape(url: str) -> dict[str, float]:
    """vLLM's prefix-cache and preemption counters and this runtime's KV decisions, summed over label sets."""
    text, samples = metric_samples(url)
    out: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name in SCRAPED:
            out[s.name.split(":")[1].removesuffix("_total")] += s.value
    out.update(kv_decisions(text))
    return out


@contextmanager
def serving(server: str, args, pool_tokens: int, logs: Path):
    """Start one server with a KV pool of `pool_tokens`; yield (url, served model name, whether it is the Ray
    runtime)."""
    name = Path(args.model_dir).name
    if server == "ray":
        from deployments.launch import start, stop
        from runtime.serving.config import ServeSettings

        blocks = -(-pool_tokens // OURS["block_size"]) + 1  # plus vLLM's null block, as StockServer.kv_blocks
        settings = ServeSettings(model=args.model_dir, policy="astraea", max_queue=100_000,
                                 engine={"kv_blocks": blocks, "max_model_len": args.max_model_len,
                                         "max_num_seqs": args.max_num_seqs,
                                         "host_swap_blocks": args.host_swap_blocks})
        url = start(settings, free_port())
        try:
            yield url, settings.served_model_name, True
        finally:
            stop(settings)
        return
    env = {"AGENTRIVER_KV_LOG": str(logs / "kv.jsonl")} if server == "drop_in" else {}
    stock = StockServer(args.model_dir, server, served_model_name=name, max_model_len=args.max_model_len,
                        max_num_seqs=args.max_num_seqs, kv_pool_tokens=pool_tokens,
                        host_swap_blocks=args.host_swap_blocks, env=env)
    with running(stock, logs / "server.log") as url:
        yield url, name, False


def run_point(url: str, model: str, ray_runtime: bool, jobs: list[Job], text_of, args, desc: str) -> dict:
    calls: list[tuple[float, str, int]] = []
    t0 = time.monotonic()

    def on_call(job_id: str, prompt: int, completion: int) -> None:
        calls.append((time.monotonic() - t0, job_id, prompt + completion))

    before = scrape(url)
    with ThroughputSampler(url) as sampler:
        results, jcts, errors = asyncio.run(replay_http(url, model, jobs, text_of, args.tool_time_scale, desc,
                                                        session_api=False, on_call=on_call,
                                                        answer_ids=args.answer_ids))
    wall = time.monotonic() - t0
    if ray_runtime:
        time.sleep(2.5)  # the Ray runtime's engines report their KV logs to the scheduler every second
    after = scrape(url)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    arrivals = {j.job_id: j.arrival_s for j in jobs}
    ends = {r.session_id: arrivals[r.session_id] + t for r, t in zip(results, jcts, strict=True)}
    tokens = sum(r.completion_tokens for r in results)
    queries = delta.get("prefix_cache_queries", 0.0)
    return {"jobs": len(results), **jct_summary(np.array(jcts)), "output_tokens": tokens,
            "tokens_per_s": tokens / wall, "saturated_tokens_per_s": saturated_rate(sampler.samples),
            "wall_s": wall, "http_errors": errors,
            "peak_live_context_tokens": peak_live_context(calls, ends),
            "prefix_hit_rate": delta.get("prefix_cache_hits", 0.0) / queries if queries else None,
            "preemptions": int(delta.get("num_preemptions", 0)),
            **{k: int(delta.get(k, 0)) for k in ("kv_preserve", "kv_swap", "kv_discard", "kv_released")}}


def reused_tokens(kv_log: Path, tag: str) -> int:
    """Tokens the drop-in plugin found kept (pinned or swapped back) when sessions of this run resumed."""
    import json

    if not kv_log.exists():
        return 0
    return sum(e["tokens"] for e in map(json.loads, kv_log.read_text().splitlines())
               if e["event"] == "resume" and e["job"].endswith(tag))


def run(args, table, text_of, server: str) -> list[dict]:
    """Every pressure, load and the no-tool run on `server`."""
    all_jobs = trace_jobs(table, 1.0, "x", args.max_model_len)
    total = context_tokens(all_jobs)
    min_pool = args.max_model_len + 128  # one full-length request in any block size, with vLLM's null block
    pools = {pr: max(min_pool, int(total / pr)) for pr in args.pressure_list}
    rows = []
    for pressure, pool in pools.items():
        logs = Path(args.logs) / f"{server}-p{pressure:g}"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "kv.jsonl").unlink(missing_ok=True)  # the plugin appends: an earlier sweep's resumes are not ours
        print(f"{LABELS[server]}: KV pool {pool} tokens (pressure {pressure:g})", file=sys.stderr, flush=True)
        with serving(server, args, pool, logs) as (url, model, ray_runtime):
            points = [(load, False, 0) for load in args.load_list]
            if args.notool_load and pressure == args.pressure_list[0]:
                points += [(args.notool_load, True, k) for k in range(args.notool_rounds)]
            for load, single, k in points:
                tag = f"l{load:g}n{k}" if single else f"l{load:g}"
                jobs = trace_jobs(table, load, tag, args.max_model_len, single)
                desc = f"{server} p{pressure:g} {'no tools' if single else 'load'} {load:g}"
                row = {"server": server, "pressure": pressure, "kv_pool_tokens": pool, "load": load,
                       "tools": not single, "round": k, "context_tokens": context_tokens(jobs),
                       **run_point(url, model, ray_runtime, jobs, text_of, args, desc)}
                row["live_pressure"] = row["peak_live_context_tokens"] / pool
                row["reused_tokens"] = reused_tokens(logs / "kv.jsonl", tag) if server == "drop_in" else None
                print(f"  {desc}: avg JCT {row['avg_jct_s']:.2f} s, p99 {row['p99_jct_s']:.2f} s, "
                      f"{row['tokens_per_s']:.1f} tok/s ({row['saturated_tokens_per_s'] or 0:.1f} while requests "
                      f"waited), live pressure {row['live_pressure']:.2f}, "
                      f"{row['http_errors']} errors", file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def _base(rows: list[dict], r: dict) -> dict | None:
    return next((b for b in rows if b["server"] == BASE and b["pressure"] == r["pressure"]
                 and b["load"] == r["load"] and b["tools"] == r["tools"]), None)


def markdown(data: dict) -> str:
    rows = data["rows"]
    lines = [f"Command: `{data['meta']['command']}`", "",
             f"Trace `{data['meta']['trace']}`, model `{data['meta']['model']}`, tool times x"
             f"{data['meta']['tool_time_scale']:g}. Servers: " + "; ".join(LABELS.values()) + ". Ratios are to (b).",
             "", "## Agent sessions (tool calls)", "",
             "| pressure | KV pool (tokens) | live pressure | load | server | jobs | avg JCT (s) | p99 (s) | "
             "avg / (b) | p99 / (b) | output tok/s | prefix hits | preemptions | reused (drop-in) | HTTP errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {s: i for i, s in enumerate(SERVERS)}

    def fmt(r: dict) -> list[str]:
        b = _base(rows, r)
        hit = f"{100 * r['prefix_hit_rate']:.0f}%" if r["prefix_hit_rate"] is not None else "-"
        return [f"{r['avg_jct_s']:.2f}", f"{r['p99_jct_s']:.2f}",
                f"{r['avg_jct_s'] / b['avg_jct_s']:.3f}" if b else "-",
                f"{r['p99_jct_s'] / b['p99_jct_s']:.3f}" if b else "-",
                f"{r['tokens_per_s']:.1f}", hit, str(r["preemptions"]),
                str(r["reused_tokens"]) if r["reused_tokens"] is not None else "-", str(r["http_errors"])]

    for r in sorted((r for r in rows if r["tools"]), key=lambda r: (r["pressure"], r["load"], order[r["server"]])):
        lines.append(f"| {r['pressure']:g} | {r['kv_pool_tokens']} | {r['live_pressure']:.2f} | {r['load']:g} | "
                     f"{r['server']} | {r['jobs']} | " + " | ".join(fmt(r)) + " |")
    notool = notool_summary(rows)
    if notool:
        b = notool.get(BASE)
        lines += ["", "## No tool calls (every segment alone, one call each; medians over the rounds)", "",
                  "| load | server | rounds | jobs | output tok/s while requests wait (range) | / (b) | "
                  "tok/s over the run | / (b) | avg JCT (s) | p99 (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for server, m in notool.items():
            sat = f"{m['saturated']:.1f} ({m['saturated_min']:.1f}-{m['saturated_max']:.1f})" if m["saturated"] else "-"
            sat_ratio = f"{m['saturated'] / b['saturated']:.3f}" if b and b["saturated"] and m["saturated"] else "-"
            run_ratio = f"{m['tokens_per_s'] / b['tokens_per_s']:.3f}" if b else "-"
            lines.append(f"| {m['load']:g} | {server} | {m['rounds']} | {m['jobs']} | {sat} | {sat_ratio} | "
                         f"{m['tokens_per_s']:.1f} | {run_ratio} | {m['avg_jct_s']:.2f} | {m['p99_jct_s']:.2f} |")
    return "\n".join(lines) + "\n"


def notool_summary(rows: list[dict]) -> dict[str, dict]:
    """Per server (in SERVERS order), the medians of its no-tool rounds: a server started twice in one sweep
    (`--servers b,c,b,c`, to interleave them in time) pools the rounds of both starts."""
    out = {}
    for server in SERVERS:
        runs = [r for r in rows if not r["tools"] and r["server"] == server]
        if not runs:
            continue
        sat = [r["saturated_tokens_per_s"] for r in runs if r.get("saturated_tokens_per_s")]
        out[server] = {"load": runs[0]["load"], "rounds": len(runs), "jobs": runs[0]["jobs"],
                       "saturated": float(np.median(sat)) if sat else None,
                       "saturated_min": min(sat, default=None), "saturated_max": max(sat, default=None),
                       **{k: float(np.median([r[k] for r in runs]))
                          for k in ("tokens_per_s", "avg_jct_s", "p99_jct_s")}}
    return out


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["tools"]]
    loads = sorted({r["load"] for r in rows})
    fig, axes = plt.subplots(1, len(loads) + 1, figsize=(5 * (len(loads) + 1), 4), squeeze=False)
    for ax, load in zip(axes[0], loads, strict=False):
        for server in SERVERS:
            pts = sorted((r["pressure"], r["avg_jct_s"]) for r in rows if r["server"] == server and r["load"] == load)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=LABELS[server])
        ax.set(xlabel="KV pressure (sum of job contexts / pool)", ylabel="average JCT (s)", title=f"load x{load:g}")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    ax = axes[0][-1]
    notool = {s: m for s, m in notool_summary(data["rows"]).items() if m["saturated"]}
    ax.bar(list(notool), [m["saturated"] for m in notool.values()], color="tab:gray",
           yerr=[[m["saturated"] - m["saturated_min"] for m in notool.values()],
                 [m["saturated_max"] - m["saturated"] for m in notool.values()]], capsize=4)
    ax.set(ylabel="output tokens/s while requests wait", title="no tool calls (median, range of rounds)")
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = read_trace(args.trace)
    text_of = text_maker(args.model_dir)
    args.answer_ids = round_trip_ids(args.model_dir)[:ANSWER_WORDS]
    data = {"meta": {"command": command_line("bench.vs_vllm_server", argv), "trace": args.trace, "model": args.model,
                     "tool_time_scale": args.tool_time_scale, "max_model_len": args.max_model_len,
                     "max_num_seqs": args.max_num_seqs}, "comparison": True, "rows": []}
    for server in args.server_list:  # results are written after each server: a long sweep keeps what it measured
        data["rows"] += run(args, table, text_of, server)
        md = write_results(args.out, data, markdown, plot)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
