"""The OpenAI chat-completions wire format this runtime accepts and answers, as pydantic models.

Only what an agent client sends is modelled; unknown fields are ignored (clients send many optional ones), but
every field that is present is checked strictly (no `true` for a number, no `1` for a boolean), so a bad value is
refused with its name instead of reaching an engine.
Two fields are this runtime's own: `session_id` (ties calls into one agent job; the `X-Session-Id` header does the
same) and `tool_category` (the tool this call's answer will invoke, which feeds the service-time predictor). Three
are vLLM's, taken as its own server takes them: `ignore_eos`, `allowed_token_ids` and `vllm_xargs`, which carries
what the drop-in plugin reads (`tool_category`, `last`, `kv_action`), so one client serves both.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from runtime.engine.job_hints import CALL_ARG_CHECKS, TOOL_CATEGORY_MAX
from runtime.engine.sampling import Sampling

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # used with fullmatch: no trailing newline


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    arguments: str = ""


class ToolCall(BaseModel):
    model_config = ConfigDict(strict=True)

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text: content parts of type text joined (images and audio are not served here)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class VllmXargs(BaseModel):
    """`vllm_xargs` as the drop-in plugin reads them, with the same checks (`job_hints.CALL_ARG_CHECKS`): the tool
    this call's answer invokes, whether it is the session's last call (the session ends with it, as after a close),
    and a KV action for its tool wait. Other keys are vLLM's or another plugin's: ignored."""

    model_config = ConfigDict(extra="ignore")

    tool_category: Any = ""
    last: Any = False
    kv_action: Any = ""

    @field_validator(*CALL_ARG_CHECKS)
    @classmethod
    def _checked(cls, value: Any, info: ValidationInfo) -> Any:
        return CALL_ARG_CHECKS[info.field_name](value)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    session_id: str | None = None
    tool_category: str = Field(default="", max_length=TOOL_CATEGORY_MAX)
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens (benchmarks replaying traces)
    allowed_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)  # vLLM's too
    vllm_xargs: VllmXargs = Field(default_factory=VllmXargs)
    user: str | None = None

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, v: str | None) -> str | None:
        if v is not None and not SESSION_ID.fullmatch(v):
            raise ValueError("must be 1-128 characters of letters, digits and ._:- starting with a letter or digit")
        return v

    def tool(self) -> str:
        """The tool this call's answer invokes: the field of this runtime, else the drop-in plugin's."""
        return self.tool_category or self.vllm_xargs.tool_category

    def output_budget(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def sampling(self) -> Sampling:
        allowed = tuple(self.allowed_token_ids) if self.allowed_token_ids is not None else None
        return Sampling(self.temperature, self.ignore_eos, allowed)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
               session_id: str) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens), "session_id": session_id}


def chunk(cid: str, model: str, delta: dict, finish_reason: str | None, session_id: str,
          usage_: dict | None = None) -> str:
    """One server-sent event of a streamed completion."""
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], "session_id": session_id}
    if usage_ is not None:
        body["usage"] = usage_
    return f"data: {json.dumps(body)}\n\n"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
