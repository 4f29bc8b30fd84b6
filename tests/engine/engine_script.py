"""Run by test_vllm_engine.py in a subprocess: vLLM spawns its engine core, which needs a __main__ guard."""

import asyncio
import json
import sys

from runtime.engine.vllm_engine import EngineConfig, VllmEngine


async def _drive(engine: VllmEngine, prompts: list[list[int]], max_tokens: int) -> tuple[list, list, list]:
    first = await asyncio.gather(*[engine.generate(p, max_tokens) for p in prompts])
    again = await asyncio.gather(*[engine.generate(p, max_tokens) for p in prompts[:2]])
    whole = [(c.token_ids, c.finish_reason) async for c in engine.stream(prompts[2], max_tokens, steps=False)]
    return first, again, whole


if __name__ == "__main__":
    model, step_log, out = sys.argv[1:4]
    engine = VllmEngine(EngineConfig(model=model, step_log=step_log, max_model_len=1024, kv_blocks=64)).start()
    prompts = [[7 + (i * 13 + k) % 1500 for k in range(30 + 50 * i)] for i in range(5)]
    first, again, whole = asyncio.run(_drive(engine, prompts, 12))
    engine.shutdown()
    with open(out, "w") as f:
        json.dump({"first": first, "again": again, "whole": whole, "prompt_tokens": sum(len(p) for p in prompts)}, f)
