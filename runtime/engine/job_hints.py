"""How a job's identity and segment facts travel with each vLLM request: one versioned `kv_hints` action.

vLLM carries a request's `KvHintsEnvelope` unchanged to the `Request` object its scheduler sees, which is what a
scheduler plugin in the EngineCore process needs: the frontend knows which job a segment belongs to; the plugin
keeps the job's history (level, waited time) across that job's requests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

HINT_TYPE = "agentriver.job"
HINT_VERSION = "1"
KV_ACTIONS = ("", "preserve", "swap", "discard")


@dataclass(frozen=True)
class JobHint:
    job_id: str
    arrival_s: float  # wall-clock time.time() of the job's arrival
    seg: int  # index of this segment in the job
    context_tokens: int  # tokens of earlier segments (prompts + outputs)
    prompt_tokens: int  # tokens this segment adds
    output_tokens: int  # tokens it will generate (the segment oracle, like the simulator's default)
    prev_category: str = ""  # tool whose output this segment consumes ("" for the first segment)
    first_category: str = ""  # the job's first tool ("" until known)
    tool_category: str = ""  # tool the job calls when this segment ends ("" if none or not yet known)
    last: bool = False  # the job ends with this segment (when the caller knows)
    kv_action: str = ""  # preserve|swap|discard: the caller's choice for the KV at this segment's tool call
    # ("" lets the engine's KV manager decide; a caller may know a tool call will be long, e.g. a human reply)

    def __post_init__(self) -> None:
        if not self.job_id:
            raise ValueError("JobHint.job_id must not be empty")
        if self.seg < 0 or self.context_tokens < 0 or self.prompt_tokens < 0 or self.output_tokens < 1:
            raise ValueError(f"JobHint for job {self.job_id!r}: seg, context and prompt tokens must be >= 0 and "
                             f"output_tokens >= 1")
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
            return JobHint(**action.payload)
    return None
