"""`VllmEngine`: one unmodified vLLM `AsyncLLM` with this runtime's scheduler plugin, driven with token ids.

Agent jobs talk to it one segment at a time: a segment is the job's full context as token ids plus the number of
tokens to generate (greedy, `ignore_eos`, so lengths are exactly the trace's). Prefix caching is on, as users run
vLLM, so a resubmitted context hits whatever blocks the LRU kept.

vLLM starts its engine core in a spawned process: scripts that create a `VllmEngine` need an
`if __name__ == "__main__":` guard. Its output handler lives on the event loop of the first `generate` call, so an
engine serves one event loop for its whole life.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from runtime.agents.costmodel import DeploymentProfile
from runtime.engine.host_swap import CONNECTOR_NAME, MODULE_PATH
from runtime.engine.job_hints import OUTCOME_KEY, JobHint
from runtime.engine.sampling import Sampling
from runtime.engine.telemetry import VllmLoad, load_logger_factory
from runtime.engine.vllm_scheduler import (
    KV_LOG_ENV,
    POLICY_ENV,
    STEP_LOG_ENV,
    check_vllm_version,
    engine_profile,
    release_request_id,
    step_cost,
)

RESERVED_CPUS_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
REPLAY = Sampling()  # greedy, exactly max_tokens: what trace replays draw

PLUGINS = {"steplog": "runtime.engine.vllm_scheduler.StepLogScheduler",
           "policy": "runtime.engine.vllm_scheduler.PolicyScheduler"}


@dataclass(frozen=True)
class EngineConfig:
    model: str
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE (whole GiB) on CPU
    kv_blocks: int | None = None  # cap the KV pool to this many blocks (num_gpu_blocks_override): real pressure
    max_model_len: int = 4096
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    block_size: int = 32  # vLLM's CPU backend needs a multiple of 32
    plugin: str = "steplog"
    step_log: str | None = None  # JSONL path for the per-iteration step log
    policy: str = "astraea"  # runtime.agents policy the "policy" plugin orders the waiting queue with
    # Host memory for swapped KV, in blocks (0: no KV connector; the KV manager never picks swap). With the
    # steplog plugin the connector is loaded but never stores anything: comparisons configure both engines alike.
    host_swap_blocks: int = 0
    kv_log: str | None = None  # JSONL path for KV events (decisions, releases, resumes and the tokens they reused)
    # Cores vLLM's CPU backend keeps free of the model's threads (VLLM_CPU_NUM_OF_RESERVED_CPU). Left to vLLM, it
    # reserves one for its scheduler process and one more when a KV connector is configured; on a 2-core machine
    # the second makes the reservation impossible, so vLLM reserves none and the model runs on both cores: the
    # connector alone then makes steps up to 1.5x faster (bench/results/engine_settings.md). Set here, an engine's
    # threads never depend on whether it has a connector, and a stock server compared with it gets the same value.
    reserved_cpus: int = 0

    def __post_init__(self) -> None:
        if not Path(self.model, "config.json").exists():
            raise FileNotFoundError(f"model directory {self.model!r} has no config.json (build it with `make model`)")
        if self.plugin not in PLUGINS:
            raise ValueError(f"unknown scheduler plugin '{self.plugin}'; choose one of {sorted(PLUGINS)}")
        if self.block_size % 32:
            raise ValueError(f"block_size must be a multiple of 32 on vLLM's CPU backend, got {self.block_size}")
        if not isinstance(self.kv_cache_gib, int) or self.kv_cache_gib < 1:
            raise ValueError(f"kv_cache_gib must be a whole number of GiB >= 1, got {self.kv_cache_gib!r}")
        if self.kv_blocks is not None and (self.kv_blocks - 1) * self.block_size < self.max_model_len:
            # vLLM keeps one block back (the null block)
            raise ValueError(f"kv_blocks={self.kv_blocks} x block_size={self.block_size} cannot hold one request of "
                             f"max_model_len={self.max_model_len} (vLLM also keeps one block back)")
        if self.host_swap_blocks < 0:
            raise ValueError(f"host_swap_blocks must be >= 0, got {self.host_swap_blocks}")
        if self.reserved_cpus < 0:
            raise ValueError(f"reserved_cpus must be >= 0, got {self.reserved_cpus}")
        if self.plugin != "policy" and self.kv_log:
            raise ValueError("kv_log needs plugin='policy' (the KV manager lives there)")


class JobBusyError(ValueError):
    """A segment of a job that already has a segment running on this engine (a job's segments are sequential)."""


@dataclass(frozen=True)
class Completion:
    """What one segment produced: its tokens and why it stopped ("length": max_tokens reached, "stop": EOS). The
    last one carries the segment's outcome as the policy plugin reported it (None without the plugin)."""

    token_ids: list[int]
    finish_reason: str
    outcome: dict | None = None


class VllmEngine:
    def __init__(self, config: EngineConfig):
        check_vllm_version()
        self.config = config
        self._llm = None
        # Jobs with a segment running here. A job's segments run one at a time (the plugin keeps one mirror per
        # job, and an exception in the engine process would kill the engine, so the check is here). Order is not
        # enforced: a segment whose caller gave up may be sent again, and a new job may reuse a closed job's id.
        self._running_jobs: set[str] = set()
        self.load = VllmLoad()

    def start(self) -> VllmEngine:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        c = self.config
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(c.kv_cache_gib)
        os.environ[RESERVED_CPUS_ENV] = str(c.reserved_cpus)
        os.environ[POLICY_ENV] = c.policy
        for env, value in ((STEP_LOG_ENV, c.step_log), (KV_LOG_ENV, c.kv_log)):
            if value:
                os.environ[env] = str(Path(value).resolve())
            else:
                os.environ.pop(env, None)
        transfer = None
        if c.host_swap_blocks:
            from vllm.config import KVTransferConfig

            transfer = KVTransferConfig(kv_connector=CONNECTOR_NAME, kv_connector_module_path=MODULE_PATH,
                                        kv_role="kv_both",
                                        kv_connector_extra_config={"host_blocks": c.host_swap_blocks})
        args = AsyncEngineArgs(model=c.model, max_model_len=c.max_model_len, max_num_seqs=c.max_num_seqs,
                               max_num_batched_tokens=c.max_num_batched_tokens, block_size=c.block_size,
                               enable_prefix_caching=True, enforce_eager=True, scheduler_cls=PLUGINS[c.plugin],
                               num_gpu_blocks_override=c.kv_blocks, disable_log_stats=True,
                               kv_transfer_config=transfer)
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[load_logger_factory(self.load)])
        return self

    @property
    def kv_blocks(self) -> int:
        """Blocks in the KV pool, as the engine core sized it."""
        if self._llm is None:
            raise RuntimeError("engine not started: call start() first")
        return int(self._llm.vllm_config.cache_config.num_gpu_blocks)

    async def generate(self, prompt_token_ids: list[int], max_tokens: int, request_id: str | None = None,
                       hint: JobHint | None = None) -> list[int]:
        """Greedy-generate exactly `max_tokens` tokens after `prompt_token_ids` (end of sequence ignored, so a
        replay's lengths are exactly its trace's)."""
        tokens: list[int] = []
        async for delta in self.stream(prompt_token_ids, max_tokens, request_id=request_id, hint=hint):
            tokens += delta.token_ids
        return tokens

    async def stream(self, prompt_token_ids: list[int], max_tokens: int, *, sampling: Sampling = REPLAY,
                     request_id: str | None = None, hint: JobHint | None = None, steps: bool = True):
        """Yield a `Completion` with each step's new tokens; the last one carries the finish reason. `steps=False`:
        one `Completion` with the whole answer at the end (for a caller that waits for it whole anyway, every
        step's tokens would be one more message to pass on)."""
        if self._llm is None:
            raise RuntimeError("engine not started: call start() first")
        if not prompt_token_ids:
            raise ValueError("prompt_token_ids must not be empty")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if len(prompt_token_ids) + max_tokens > self.config.max_model_len:
            raise ValueError(f"context {len(prompt_token_ids)} + {max_tokens} new tokens exceeds max_model_len "
                             f"{self.config.max_model_len}")
        params = sampling.params(max_tokens, final_only=not steps)
        if hint is not None:
            if hint.job_id in self._running_jobs:
                raise JobBusyError(f"job {hint.job_id!r} already has a segment running on this engine")
            self._running_jobs.add(hint.job_id)
        sent = 0
        outputs = self._llm.generate({"prompt_token_ids": list(prompt_token_ids)}, params,
                                     request_id or uuid.uuid4().hex,
                                     kv_hints=hint.envelope() if hint is not None else None)
        try:
            async for out in outputs:
                done = out.outputs[0]
                tokens = list(done.token_ids)
                if len(tokens) > sent or out.finished:
                    if out.finished:
                        outcome = (out.kv_transfer_params or {}).get(OUTCOME_KEY)
                        yield Completion(tokens[sent:], done.finish_reason or "", outcome)
                    else:
                        yield Completion(tokens[sent:], "")
                    sent = len(tokens)
        finally:
            await outputs.aclose()  # a consumer that stopped early: vLLM aborts the request and frees its blocks
            if hint is not None:
                self._running_jobs.discard(hint.job_id)

    async def release(self, jobs: dict[str, float]) -> None:
        """Tell the policy plugin that these jobs (id -> arrival) ended or moved away: it drops their mirror, pin
        and host copy unless a segment of theirs is running here."""
        if self._llm is not None and jobs and self.config.plugin == "policy":
            await self._llm.engine_core.abort_requests_async([release_request_id(j, a) for j, a in jobs.items()])

    def profile(self) -> DeploymentProfile:
        """The engine's real shape (KV geometry, limits, the step cost its plugin predicts with)."""
        return engine_profile(self._llm.vllm_config, self.kv_blocks, self.config.host_swap_blocks, step_cost())

    async def reset_prefix_cache(self) -> bool:
        """Forget cached prefixes, so a repeated replay starts as cold as the first. False (and nothing dropped)
        while any block is held - by a running request or a preserved job's pin."""
        if self._llm is None:
            return False
        return bool(await self._llm.reset_prefix_cache())

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
