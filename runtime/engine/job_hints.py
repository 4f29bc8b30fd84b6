"""How a job's identity and cluster-wide state travel with each vLLM request: one versioned `kv_hints` action.

vLLM carries a request's `KvHintsEnvelope` unchanged to the `Request` object its scheduler sees, which is what a
scheduler plugin in the EngineCore process needs: the frontend knows which job a segment belongs to, and the
cluster's job table knows the job's history (MLFQ level, waited time, attained service, tools called) and its
forecast. The plugin orders its waiting queue with them, so a job that moves to another engine keeps its place.
Version 2 added the history and the forecast; a version-1 hint is not read (the request is scheduled as vLLM
would).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

HINT_TYPE = "agentriver.job"
HINT_VERSION = "2"
KV_ACTIONS = ("", "preserve", "swap", "discard")
TOOL_CATEGORY_MAX = 64  # characters


def _tool_category(value: Any) -> str:
    if not isinstance(value, str) or len(value) > TOOL_CATEGORY_MAX:
        raise ValueError(f"must be a string of at most {TOOL_CATEGORY_MAX} characters")
    return value


def _last(value: Any) -> bool:
    if type(value) not in (bool, int) or value not in (0, 1):
        raise ValueError("must be 0 or 1 (or a boolean)")
    return bool(value)


def _kv_action(value: Any) -> str:
    if not isinstance(value, str) or value not in KV_ACTIONS:
        raise ValueError(f"must be one of {', '.join(repr(a) for a in KV_ACTIONS)}")
    return value


# What a caller may say about one call in `vllm_xargs`, and how each value is checked (a ValueError says what is
# wrong). The drop-in plugin (runtime.engine.sessions) and the Ray runtime's API (deployments.openai_api) read them
# with these checks; only what they do with a bad value differs (log and ignore it inside vLLM's server, whose HTTP
# answer is already out of reach; a 400 naming the field at this runtime's API).
CALL_ARG_CHECKS: dict[str, Callable[[Any], Any]] = {
    "tool_category": _tool_category,  # the tool this call's answer invokes
    "last": _last,  # the session's last call: the job ends with it
    "kv_action": _kv_action,  # the caller's KV choice for the tool wait that follows ("" lets the engine decide)
}


@dataclass(frozen=True)
class CallArgs:
    """What the caller said about a call in `vllm_xargs` (`CALL_ARG_CHECKS`)."""

    tool_category: str = ""
    last: bool = False
    kv_action: str = ""

    @classmethod
    def read(cls, extra: dict | None) -> tuple[CallArgs, dict[str, str]]:
        """The call's arguments from `extra` (other keys are vLLM's or another plugin's: ignored) and the problem
        of each bad value by its field; a bad value is left at its default."""
        values, problems = {}, {}
        for name, check in CALL_ARG_CHECKS.items():
            if extra and name in extra:
                try:
                    values[name] = check(extra[name])
                except ValueError as e:
                    problems[name] = str(e)
        return cls(**values), problems


@dataclass(frozen=True)
class JobHint:
    job_id: str
    arrival_s: float  # wall-clock time.time() of the job's arrival
    seg: int  # index of this segment in the job
    context_tokens: int  # tokens of earlier segments (prompts + outputs)
    prompt_tokens: int  # tokens this segment adds
    output_tokens: int  # tokens it may generate (max_tokens)
    tools: tuple[str, ...] = ()  # categories of the tool calls before this segment, in order (the first ones
    # when fewer than `seg` are given)
    tool_category: str = ""  # tool the job calls when this segment ends ("" if none or not yet known)
    last: bool = False  # the job ends with this segment (when the caller knows)
    kv_action: str = ""  # preserve|swap|discard: the caller's choice for the KV at this segment's tool call
    # ("" lets the engine's KV manager decide; a caller may know a tool call will be long, e.g. a human reply)
    # The job's cluster-wide state, from the scheduler that granted this segment. None (a caller without a cluster,
    # e.g. a replay against one engine): the engine keeps the history it built itself and predicts on its own.
    level: int | None = None  # MLFQ level
    waited_s: float | None = None  # queueing time accumulated over its segments so far (HRRN history)
    attained_s: float | None = None  # engine time its finished segments received
    forecast_output_tokens: float | None = None  # predicted output of this segment
    forecast_segments: float | None = None  # predicted segments left, this one included

    def __post_init__(self) -> None:
        if not self.job_id:
            raise ValueError("JobHint.job_id must not be empty")
        if self.seg < 0 or self.context_tokens < 0 or self.prompt_tokens < 0 or self.output_tokens < 1:
            raise ValueError(f"JobHint for job {self.job_id!r}: seg, context and prompt tokens must be >= 0 and "
                             f"output_tokens >= 1")
        if len(self.tools) > self.seg:
            raise ValueError(f"JobHint for job {self.job_id!r}: tools names at most one category per earlier "
                             f"segment ({self.seg}), got {len(self.tools)}")
        if self.kv_action not in KV_ACTIONS:
            raise ValueError(f"JobHint for job {self.job_id!r}: kv_action must be one of {KV_ACTIONS}, "
                             f"got {self.kv_action!r}")

    def envelope(self):
        from vllm.v1.kv_hints import KvHintAction, KvHintsEnvelope

        action = KvHintAction(action_id=f"{self.job_id}/{self.seg}", action_type=HINT_TYPE,
                              action_version=HINT_VERSION, payload=asdict(self))
        return KvHintsEnvelope(protocol_version="1", message_id=f"{self.job_id}/{self.seg}", actions=[action])


def hint_of(request) -> JobHint | None:
    """The JobHint a vLLM `Request` carries, or None (requests without one are scheduled as vLLM would)."""
    envelope = getattr(request, "kv_hints", None)
    if envelope is None:
        return None
    for action in envelope.actions:
        if action.action_type == HINT_TYPE and action.action_version == HINT_VERSION:
            payload = dict(action.payload)
            payload["tools"] = tuple(payload.get("tools", ()))
            return JobHint(**payload)
    return None


OUTCOME_KEY = "agentriver.outcome"  # where the plugin puts a segment's outcome in vLLM's kv_transfer_params


@dataclass(frozen=True)
class SegmentOutcome:
    """How a segment ended on its engine: the one value the cluster's job table learns it from. The plugin fills
    in what only the engine core knows (the KV decision at the tool call, measured prefill, local queueing) and
    vLLM returns it with the request's last output."""

    output_tokens: int = 0
    service_s: float = 0.0  # engine time from admission to the last token
    queued_s: float = 0.0  # time the request waited in the engine's own queue
    prefill_tokens: int = 0  # prompt tokens actually computed (cache misses and recomputation)
    kv_state: str = "discarded"  # where the job's KV is kept during its tool call (KVState value)
    kv_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kv_state not in ("none", "preserved", "swapped", "discarded"):
            raise ValueError(f"SegmentOutcome.kv_state: unknown state {self.kv_state!r}")

    @classmethod
    def of(cls, reported: dict | None, output_tokens: int, service_s: float) -> SegmentOutcome:
        """The outcome the plugin `reported` (under OUTCOME_KEY in the last output's kv_transfer_params), with the
        tokens the caller received; without a report (a request the plugin did not track) its KV was freed and
        the service is the caller's measurement."""
        found = reported or {}
        return cls(**{**found, "output_tokens": output_tokens, "service_s": found.get("service_s", service_s)})
