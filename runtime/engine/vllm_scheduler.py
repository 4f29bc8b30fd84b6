"""vLLM scheduler plugin (`SchedulerConfig.scheduler_cls`): the hook through which this runtime sees - and later
steers - every iteration of an unmodified vLLM engine.

It runs inside vLLM's EngineCore process, so it is configured through environment variables, which the spawned
process inherits. Today it records the step log (what each iteration computed and how long it took), which
`runtime.agents.costmodel.fit` turns into the simulator's cost model. The override surface is kept to
`schedule` and `update_from_output`, taken as `*args, **kwargs` because their signatures drift between vLLM
releases; the supported version is checked when the class is built.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

import vllm
from vllm.v1.core.sched.scheduler import Scheduler

from runtime.agents.costmodel import StepRecord, prefill_pairs

SUPPORTED_VLLM = "0.32."
STEP_LOG_ENV = "AGENTRIVER_STEP_LOG"  # JSONL file the plugin appends one StepRecord per iteration to


def check_vllm_version(version: str = vllm.__version__) -> None:
    if not version.startswith(SUPPORTED_VLLM):
        raise RuntimeError(f"agentriver's vLLM scheduler plugin supports vLLM {SUPPORTED_VLLM}x, found {version}; "
                           f"install the project's pinned extra (`pip install -e .[cpu]` or `.[gpu]`)")


class StepLogScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        check_vllm_version()
        super().__init__(*args, **kwargs)
        path = os.environ.get(STEP_LOG_ENV)
        self._step_log = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives with the engine
        self._step_started = 0.0
        self._pending: dict | None = None

    def schedule(self, *args, **kwargs):
        self._step_started = time.perf_counter()
        out = super().schedule(*args, **kwargs)
        if self._step_log is not None and out.total_num_scheduled_tokens:
            self._pending = self._describe(out)
        return out

    def update_from_output(self, *args, **kwargs):
        result = super().update_from_output(*args, **kwargs)
        if self._pending is not None:
            rec = StepRecord(**self._pending, wall_s=time.perf_counter() - self._step_started)
            self._step_log.write(json.dumps(asdict(rec)) + "\n")
            self._pending = None
        return result

    def _describe(self, out) -> dict:
        """Split the scheduled tokens into prefill chunks and decode steps (vLLM has already advanced
        num_computed_tokens by the scheduled amount when schedule() returns)."""
        prefill = decode = kv_read = 0
        pairs = 0.0
        for req_id, n in out.num_scheduled_tokens.items():
            req = self.requests.get(req_id)
            if req is None:
                continue
            before = req.num_computed_tokens - n
            if before >= req.num_prompt_tokens and n == 1:
                decode += 1
                kv_read += before
            else:
                prefill += n
                pairs += prefill_pairs(before, n)
        return {"prefill_tokens": prefill, "decode_seqs": decode, "kv_tokens_read": kv_read, "attn_pairs": pairs}

    def shutdown(self) -> None:
        if self._step_log is not None:
            self._step_log.close()
            self._step_log = None
        super().shutdown()


def read_step_log(path: str | os.PathLike) -> list[StepRecord]:
    with open(path) as f:
        return [StepRecord(**json.loads(line)) for line in f if line.strip()]
