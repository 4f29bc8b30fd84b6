"""Run by test_vllm_scheduler.py in a subprocess (vLLM needs a __main__ guard): completion order under a policy."""

import asyncio
import json
import sys
import time

from runtime.engine.job_hints import JobHint
from runtime.engine.vllm_engine import EngineConfig, VllmEngine


async def _drive(engine: VllmEngine, levels: dict[str, int]) -> dict:
    """A blocker takes the only sequence slot, then three jobs queue behind it; `levels`: the MLFQ level a cluster
    says some of them have (their history on other engines). A demoted job here is one the cluster also predicts
    long (many segments left): Astraea ages a job back to Q0 once it has waited 16x its predicted time, which a
    4-token last segment does within milliseconds behind the blocker."""
    done: list[str] = []

    async def job(name: str, prompt: int, output: int) -> None:
        hint = JobHint(job_id=name, arrival_s=time.time(), seg=0, context_tokens=0, prompt_tokens=prompt,
                       output_tokens=output, last=True, forecast_output_tokens=output,  # the caller knows
                       level=levels.get(name), forecast_segments=1e6 if name in levels else None)
        await engine.generate([11 + (k * 7 + len(name)) % 1000 for k in range(prompt)], output, hint=hint)
        done.append(name)

    blocker = asyncio.create_task(job("blocker", 40, 400))
    await asyncio.sleep(0.2)  # the blocker occupies the only sequence slot; the rest queue behind it
    rest = [asyncio.create_task(job(n, 40, o)) for n, o in (("long", 64), ("short1", 4), ("short2", 4))]
    await asyncio.sleep(0.05)
    queued_while_blocked = not done  # all three were submitted while the blocker still ran
    await asyncio.gather(blocker, *rest)
    return {"order": done, "queued_while_blocked": queued_while_blocked}


async def _both(engine: VllmEngine, policy: str) -> dict:
    result = await _drive(engine, {})
    if policy == "astraea":
        result["with_levels"] = (await _drive(engine, {"short1": 2}))["order"]
    return result


if __name__ == "__main__":
    model, policy, out = sys.argv[1:4]
    engine = VllmEngine(EngineConfig(model=model, plugin="policy", policy=policy, max_num_seqs=1,
                                     max_model_len=512)).start()
    result = asyncio.run(_both(engine, policy))
    engine.shutdown()
    with open(out, "w") as f:
        json.dump(result, f)
