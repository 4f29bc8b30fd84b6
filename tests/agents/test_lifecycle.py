"""One lifecycle: the simulator's engine and the cluster's dispatcher move a job the same way.

A short trace runs on a simulated engine whose `Lifecycle` records every transition with the simulated time. The
same transitions are then fed, at the same times (a fake clock), to the real `Dispatcher` the GlobalScheduler
actor runs: segments are submitted when the simulator made them ready, granted when it admitted them, finished
with what the simulated engine measured and decided. The dispatcher, ordering its own queue with its own policy
and predictor, must grant the same segment at every admission, hold the same history for it (level, waited time,
attained service), and keep the same KV state for every tool call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest

from runtime.agents.costmodel import LLAMA3_8B_H100, StepCost
from runtime.agents.job import Job, Segment
from runtime.agents.lifecycle import Lifecycle
from runtime.agents.policy import PolicyContext, make_policy
from runtime.agents.predictor import Predictor
from runtime.agents.sim import _ARRIVAL, SimulatedEngine
from runtime.engine.job_hints import SegmentOutcome
from runtime.serving.dispatch import Dispatcher, EngineShape


@dataclass
class Event:
    kind: str  # ready | admit | done
    t: float
    job: Job
    seg: int
    history: tuple = ()
    stats: object = None
    last: bool = False
    kv: tuple[str, int] = ("none", 0)  # done: where the engine kept the job's KV for the tool call


class RecordingLifecycle(Lifecycle):
    """The simulator's lifecycle, writing down what it did (the transitions themselves are the real ones). The KV
    state a segment's tool call got is read at the next transition: the engine applies its decision right after
    `segment_done` returns."""

    def __init__(self, policy, predictor, log: list[Event]):
        super().__init__(policy, predictor)
        self.log = log
        self._unsettled: Event | None = None

    def record(self, event: Event) -> None:
        self.settle()
        self.log.append(event)
        if event.kind == "done" and not event.last:
            self._unsettled = event

    def settle(self) -> None:
        if self._unsettled is not None:
            job = self._unsettled.job
            state = "swapped" if job.kv.value.startswith("swap") else job.kv.value
            self._unsettled.kv = (state, job.kv_tokens if state in ("preserved", "swapped") else 0)
            self._unsettled = None

    def ready(self, job, now):
        super().ready(job, now)
        self.record(Event("ready", now, job, job.seg))

    def admit(self, job, now):
        waited = super().admit(job, now)
        self.record(Event("admit", now, job, job.seg, (job.level, job.waited_s, job.attained_s)))
        return waited

    def segment_done(self, job, now, stats, view=None, asked=""):
        seg = job.seg
        decision = super().segment_done(job, now, stats, view, asked)
        self.record(Event("done", now, job, seg, stats=stats, last=decision is None))
        return decision


def trace() -> list[Job]:
    """Agents whose segments differ in size and tools, arriving close together so that they queue."""
    shapes = [(300, 40, "search", 0.8), (60, 500, "code", 0.3), (900, 20, "search", 2.0), (120, 120, "", 0.0)]
    jobs = []
    for i in range(8):
        n = 2 + i % 3
        segs = []
        for k in range(n):
            prompt, out, tool, api = shapes[(i + k) % len(shapes)]
            last = k == n - 1
            segs.append(Segment(k, prompt, out, "" if last else (tool or "search"), 0.0 if last else api + 0.1))
        jobs.append(Job(f"job{i}", 0.05 * i, tuple(segs)))
    return jobs


def simulate(jobs: list[Job]) -> tuple[list[Event], SimulatedEngine]:
    # Decode steps cost the same at any batch and context, so the decode latency the simulator's predictor learns
    # from its steps stays where the dispatcher's starts (the dispatcher learns no step times).
    cost = StepCost(base_s=0.02, token_s=0.0, kv_read_s=0.0, attn_pair_s=1e-8)
    profile = replace(LLAMA3_8B_H100, cost=cost, gpu_kv_tokens=6000, cpu_kv_tokens=4000, max_num_seqs=1,
                      block_size=32, max_model_len=4096)
    predictor = Predictor(cost, output_estimator="online", max_len=profile.max_model_len)
    policy = make_policy("astraea", PolicyContext(predictor, profile))
    log: list[Event] = []
    eng = SimulatedEngine(0, profile, policy, predictor, lambda job: None)
    eng.life = RecordingLifecycle(policy, predictor, log)
    for job in jobs:
        eng.push(job.arrival_s, _ARRIVAL, job)
    eng.now = 0.0
    while not all(j.finish_s is not None for j in jobs):
        eng.step(math.inf)
    eng.life.settle()
    return log, eng


def test_the_dispatcher_admits_and_keeps_kv_as_the_simulator_does():
    jobs = trace()
    log, eng = simulate(jobs)
    admissions = [e for e in log if e.kind == "admit"]
    assert len(admissions) == sum(len(j.segments) for j in jobs)
    assert [e.job.job_id for e in admissions] != sorted(e.job.job_id for e in admissions)  # the policy reordered

    info = EngineShape("sim", eng.profile.gpu_blocks, eng.profile.block_size, 1, eng.profile.max_model_len,
                      kv_bytes_per_token=eng.profile.kv_bytes_per_token, host_swap_blocks=eng.profile.cpu_blocks,
                      cost=eng.profile.cost)
    clock = [0.0]
    d = Dispatcher([info], "astraea", clock=lambda: clock[0], refresh_s=0.0)
    tickets: dict[str, str] = {}
    granted = []
    for e in log:
        clock[0] = e.t
        job_id = e.job.job_id
        if e.kind == "ready":
            seg = e.job.segments[e.seg]
            context = sum(s.prompt_tokens + s.output_tokens for s in e.job.segments[:e.seg])
            tickets[job_id] = d.submit(job_id, context + seg.prompt_tokens, seg.output_tokens, seg.api_category,
                                       last=e.seg == len(e.job.segments) - 1)
        elif e.kind == "admit":
            [g] = d.grant()
            granted.append(g.session_id)
            assert g.session_id == job_id, f"at t={e.t:.3f} the simulator admitted {job_id}, the dispatcher {g}"
            mine = d.jobs[job_id]
            assert (mine.level, mine.waited_s, mine.attained_s) == pytest.approx(e.history)
        else:
            state, tokens = e.kv
            d.finish(tickets[job_id], SegmentOutcome(e.stats.output_tokens, e.stats.service_s,
                                                     prefill_tokens=e.stats.prefill_tokens, kv_state=state,
                                                     kv_tokens=tokens))
            if not e.last:
                assert (d.jobs[job_id].kv.value, d.jobs[job_id].kv_tokens) == (state, tokens)
    assert granted == [e.job.job_id for e in admissions]
    kept = {e.kv[0] for e in log if e.kind == "done" and not e.last}
    assert len(kept) >= 2, kept  # memory ran short: the KV manager did not keep everything
