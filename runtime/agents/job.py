"""Agent jobs: the unit the scheduler optimises.

A job is a chain of LLM segments separated by tool calls. The static part (what the trace says) lives in
`Segment`; the live part (where the job is, how long it has waited, where its KV is) lives on `Job` so that
every policy and the KV manager read one shared record instead of keeping parallel tables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from operator import attrgetter


class KVState(enum.Enum):
    """Where a job's KV cache is between and during segments."""

    NONE = "none"  # nothing computed yet (or fully dropped)
    ACTIVE = "active"  # resident on the GPU tier and owned by a running segment
    PRESERVED = "preserved"  # resident on the GPU tier while the job waits (tool call or queue)
    SWAPPING_OUT = "swapping_out"
    SWAPPED = "swapped"  # on the CPU tier
    SWAPPING_IN = "swapping_in"
    DISCARDED = "discarded"  # freed to the LRU prefix cache; may still hit there


# Where a job's KV still exists on its engine (a discarded job may hit the prefix cache there, but nothing is held)
HELD = (KVState.PRESERVED, KVState.SWAPPED, KVState.SWAPPING_OUT)


class Phase(enum.Enum):
    PENDING = "pending"  # not arrived yet
    READY = "ready"  # a segment waits for the engine
    RUNNING = "running"
    TOOL = "tool"  # waiting on a tool / API call
    DONE = "done"


def pickled_by_fields(*left_out: str):
    """Pickle a slots dataclass as a call of its constructor with its fields, less `left_out` (trailing fields with
    defaults). A frozen one otherwise pickles through dataclasses' `_dataclass_getstate`, which walks `fields()`
    for every object; the scheduler journals every open job, segments and all, and that walk was most of the cost
    (timed: 41 -> 12-17 us per session checkpoint with this and the job's caches left out)."""

    def wrap(cls):
        every = [f.name for f in fields(cls)]
        names = every[:len(every) - len(left_out)]
        if every[len(names):] != list(left_out) or len(names) < 2:
            raise TypeError(f"{cls.__name__}: only its last fields can be left out, and two or more must stay")
        get = attrgetter(*names)
        cls.__reduce__ = lambda self: (cls, get(self))
        return cls

    return wrap


@pickled_by_fields()
@dataclass(slots=True, frozen=True)
class Segment:
    index: int
    prompt_tokens: int  # new tokens this segment appends to the context
    output_tokens: int
    api_category: str  # tool called after this segment, "" on the last one
    api_time_s: float  # duration of that call (the simulator's truth; policies never read it early)


@pickled_by_fields()
@dataclass(slots=True, frozen=True)
class Forecast:
    """What another scheduler already predicted for the job's current segment: an engine that runs one segment
    of a job uses the cluster's prediction, which learned from every engine's jobs, instead of its own (None: its
    own)."""

    output_tokens: float | None = None
    segments_left: float | None = None  # segments left including the current one


@pickled_by_fields("policy_state")  # caches stamped with this process's predictor versions: not carried over
@dataclass(slots=True, eq=False)
class Job:
    job_id: str
    arrival_s: float
    segments: tuple[Segment, ...]

    phase: Phase = Phase.PENDING
    seg: int = 0  # index of the current (or next) segment
    context_tokens: int = 0  # tokens of finished segments (prompts + outputs) that form the context
    ready_since: float = 0.0
    waited_s: float = 0.0  # accumulated queueing time over all segments (HRRN history)
    attained_s: float = 0.0  # service received (engine time of its finished segments)
    level: int = 0  # MLFQ queue level (policies that use levels)
    kv: KVState = KVState.NONE
    kv_tokens: int = 0  # tokens whose KV exists for this job on GPU or CPU
    peak_kv_tokens: int = 0  # furthest context position ever computed (prefill below it is recompute)
    seg_generated: int = 0  # tokens of the current segment generated so far (kept across a preemption)
    tool_started_s: float = 0.0
    preempted: bool = False
    finish_s: float | None = None
    engine: int = 0
    forecast: Forecast | None = None
    policy_state: dict = field(default_factory=dict)

    @property
    def current(self) -> Segment:
        return self.segments[self.seg]

    @property
    def is_last_segment(self) -> bool:
        return self.seg == len(self.segments) - 1

    @property
    def input_tokens(self) -> int:
        """Full context the current segment needs: everything before it plus its own prompt."""
        return self.context_tokens + self.current.prompt_tokens

    @property
    def resume_tokens(self) -> int:
        """Tokens whose KV the current segment needs before it can generate its next token."""
        return self.input_tokens + self.seg_generated

    @property
    def jct_s(self) -> float:
        if self.finish_s is None:
            raise ValueError(f"job {self.job_id} has not finished")
        return self.finish_s - self.arrival_s

    def waited_now(self, now: float) -> float:
        """History W(job): waiting accumulated so far, including the current wait if ready."""
        if self.phase is Phase.READY:
            return self.waited_s + (now - self.ready_since)
        return self.waited_s
