"""Replay an agent trace against a real engine in real time.

Jobs arrive at their (rate-scaled) arrival times; each segment appends its prompt tokens to the job's context and
generates exactly `output_tokens` tokens; a tool call is a real `asyncio` wait of `api_time_s x tool_time_scale`.
Prompt token ids are pseudo-random but fixed per (job, segment), so every policy replays identical work.
Today every segment is a new request carrying the job's full context (vLLM's prefix cache may hit).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from runtime.agents.job import Job
from runtime.engine.job_hints import JobHint

Generate = Callable[..., Awaitable[list[int]]]  # (prompt_token_ids, max_tokens, hint=...) -> output token ids


@dataclass(frozen=True)
class JobResult:
    job_id: str
    arrival_s: float  # scheduled arrival, relative to the replay start
    finish_s: float
    segments: int
    output_tokens: int

    @property
    def jct_s(self) -> float:
        return self.finish_s - self.arrival_s


def prompt_ids(job_id: str, seg: int, n: int, vocab: int) -> list[int]:
    seed = int.from_bytes(hashlib.sha256(f"{job_id}/{seg}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).integers(16, vocab, n).tolist()


def fit_to_context(jobs: list[Job], max_model_len: int) -> list[Job]:
    """Drop trailing segments of jobs whose context would exceed `max_model_len`, warning with the count."""
    out, cut = [], []
    for job in jobs:
        total, keep = 0, []
        for seg in job.segments:
            if total + seg.prompt_tokens + seg.output_tokens > max_model_len:
                break
            total += seg.prompt_tokens + seg.output_tokens
            keep.append(seg)
        if not keep:
            raise ValueError(f"job '{job.job_id}': its first segment alone exceeds max_model_len {max_model_len}")
        if len(keep) < len(job.segments):
            cut.append(job.job_id)
            last = keep[-1]
            keep[-1] = replace(last, api_category="", api_time_s=0.0)
        out.append(Job(job.job_id, job.arrival_s, tuple(keep)))
    if cut:
        warnings.warn(f"{len(cut)} of {len(jobs)} jobs cut to fit max_model_len={max_model_len} "
                      f"(e.g. {', '.join(cut[:3])})", stacklevel=2)
    return out


async def replay(generate: Generate, jobs: list[Job], *, vocab: int, tool_time_scale: float = 1.0,
                 hints: bool = False, oracle: bool = True,
                 on_done: Callable[[JobResult], None] | None = None) -> list[JobResult]:
    """Run every job to completion; `hints` attaches a JobHint to each request (for the policy plugin), which with
    `oracle` forecasts each segment's true output length (the simulator's default estimator; else the plugin
    predicts online); `on_done` is called as each job finishes (progress bars)."""
    if tool_time_scale < 0:
        raise ValueError(f"tool_time_scale must be >= 0, got {tool_time_scale}")
    start = time.monotonic()
    wall0 = time.time()

    async def run(job: Job) -> JobResult:
        await asyncio.sleep(max(0.0, job.arrival_s - (time.monotonic() - start)))
        context: list[int] = []
        produced = 0
        for seg in job.segments:
            context += prompt_ids(job.job_id, seg.index, seg.prompt_tokens, vocab)
            hint = None
            if hints:
                hint = JobHint(job_id=job.job_id, arrival_s=wall0 + job.arrival_s, seg=seg.index,
                               context_tokens=len(context) - seg.prompt_tokens, prompt_tokens=seg.prompt_tokens,
                               output_tokens=seg.output_tokens,
                               tools=tuple(s.api_category for s in job.segments[:seg.index]),
                               tool_category=seg.api_category, last=seg.index == len(job.segments) - 1,
                               forecast_output_tokens=seg.output_tokens if oracle else None)
            out = await generate(context, seg.output_tokens, hint=hint)
            if len(out) != seg.output_tokens:
                raise RuntimeError(f"job {job.job_id} segment {seg.index}: asked {seg.output_tokens} tokens, "
                                   f"got {len(out)}")
            context += out
            produced += len(out)
            if seg.api_category:
                await asyncio.sleep(seg.api_time_s * tool_time_scale)
        result = JobResult(job.job_id, job.arrival_s, time.monotonic() - start, len(job.segments), produced)
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(run(j) for j in jobs)))
