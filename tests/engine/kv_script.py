"""Run by test_kv_paths.py in a subprocess (vLLM's spawned engine core needs a __main__ guard): one engine with the
policy plugin and host swap; every KV path, memory pressure, error paths, then shutdown."""

import asyncio
import json
import os
import sys
import time

from runtime.engine.job_hints import JobHint
from runtime.engine.replay import prompt_ids
from runtime.engine.vllm_engine import EngineConfig, VllmEngine

VOCAB = 2000
OUT = 16


ARRIVALS: dict[str, float] = {}  # a job's arrival names it (with its id) for the plugin


def hint(job: str, seg: int, context: int, prompt: int, last: bool, kv_action: str = "") -> JobHint:
    return JobHint(job_id=job, arrival_s=ARRIVALS.setdefault(job, time.time()), seg=seg, context_tokens=context,
                   prompt_tokens=prompt, output_tokens=OUT, tool_category="search" if not last else "", last=last,
                   kv_action=kv_action)


async def agent(engine: VllmEngine, job: str, prompts: list[list[int]], kv_action: str, tool_s: float,
                flush: bool) -> tuple[list[list[int]], list[bool]]:
    """A job of len(prompts) segments; in each tool call, optionally try to flush vLLM's prefix cache so that a
    resumed segment can only reuse KV the KV manager kept (pinned or swapped)."""
    context, outs, flushed = [], [], []
    for i, p in enumerate(prompts):
        last = i == len(prompts) - 1
        context += p
        out = await engine.generate(context, OUT, hint=hint(job, i, len(context) - len(p), len(p), last, kv_action))
        outs.append(out)
        context += out
        if not last:
            await asyncio.sleep(tool_s)
            if flush:
                flushed.append(await engine.reset_prefix_cache())
    return outs, flushed


async def errors(engine: VllmEngine) -> dict:
    from vllm import SamplingParams

    found = {}
    for name, call in {
        "too_long": lambda: engine.generate([5] * 1100, OUT),
        "bad_max_tokens": lambda: engine.generate([5] * 10, 0),
        "moved_job": lambda: engine.generate([5] * 110, OUT, hint=hint("ghost", 2, 100, 10, False)),
        "repeated_segment": lambda: engine.generate([5] * 10, OUT, hint=hint("ghost", 1, 0, 10, False)),
        "reused_job_id": lambda: engine.generate([5] * 10, OUT, hint=hint("ghost", 0, 0, 10, False)),
        "concurrent_segment": lambda: asyncio.gather(
            engine.generate([5] * 10, OUT, hint=hint("twin", 0, 0, 10, False)),
            engine.generate([6] * 10, OUT, hint=hint("twin", 1, 10, 10, False))),
    }.items():
        try:
            await asyncio.wait_for(call(), 30)
            found[name] = "no error"
        except Exception as e:  # noqa: BLE001 - the test checks the type and message
            found[name] = f"{type(e).__name__}: {e}"

    async def raw_too_long():  # past our own check: vLLM's frontend must refuse it, not hang
        params = SamplingParams(max_tokens=OUT, ignore_eos=True)
        async for _ in engine._llm.generate({"prompt_token_ids": [5] * 1100}, params, "raw-too-long"):
            pass

    try:
        await asyncio.wait_for(raw_too_long(), 30)
        found["vllm_too_long"] = "no error"
    except Exception as e:  # noqa: BLE001
        found["vllm_too_long"] = f"{type(e).__name__}: {e}"
    found["still_serves"] = len(await engine.generate([5] * 40, OUT)) == OUT
    return found


async def main(engine: VllmEngine) -> dict:
    prompts = [prompt_ids("shared", i, n, VOCAB) for i, n in enumerate((200, 70, 50))]
    result = {"paths": {}}
    for action in ("preserve", "swap", "discard"):
        outs, flushed = await agent(engine, action, prompts, action, 0.5, flush=True)
        result["paths"][action] = {"outputs": outs, "flushed": flushed}
    await engine.reset_prefix_cache()

    # Pressure: four jobs pin ~10 blocks each of 47, then a job that needs 17 arrives during their tool calls.
    held = [asyncio.create_task(agent(engine, f"pin{i}", [prompt_ids(f"pin{i}", 0, 300, VOCAB),
                                                              prompt_ids(f"pin{i}", 1, 20, VOCAB)],
                                      "preserve", 8.0, flush=False)) for i in range(4)]
    await asyncio.sleep(2.0)
    t0 = time.monotonic()
    await engine.generate(prompt_ids("big", 0, 520, VOCAB), OUT, hint=hint("big", 0, 0, 520, True))
    result["big_s"] = time.monotonic() - t0
    result["pins_done_at_big"] = sum(t.done() for t in held)
    await asyncio.gather(*held)
    result["errors"] = await errors(engine)
    return result


def children(pid: int) -> list[str]:
    """Live (not zombie) child processes of `pid`, as 'pid state cmdline'."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline") as f:
                    cmd = f.read().replace("\0", " ")[:120]
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(f"{entry} {fields[0]} {cmd}")
    return kids


if __name__ == "__main__":
    model, kv_log, out = sys.argv[1:4]
    engine = VllmEngine(EngineConfig(model=model, plugin="policy", policy="astraea", max_model_len=1024,
                                     kv_blocks=48, host_swap_blocks=64, kv_log=kv_log)).start()
    result = asyncio.run(main(engine))
    engine.shutdown()
    deadline = time.monotonic() + 20
    while children(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.2)
    result["children_after_shutdown"] = children(os.getpid())
    with open(out, "w") as f:
        json.dump(result, f)
