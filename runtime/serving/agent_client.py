"""An agent as the service sees one: a chain of chat calls in one session, with a tool call between them.

Used by the demo (`make run`) and the HTTP benchmarks. Each turn appends the tool's output as a `tool` message
and the model's answer as an `assistant` message, so the context grows as a real agent's does. Every call says
what it is in `vllm_xargs` (`tool_category`, `last`), which both this service and the drop-in plugin inside vLLM's
own server read (and in this service's own `tool_category` field too). So one client drives both.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    prompt: str  # the user request (first turn) or the tool's output (later turns)
    max_tokens: int
    tool_category: str = ""  # tool called after this turn's answer ("" on the last turn)
    tool_s: float = 0.0  # how long that tool takes


@dataclass(frozen=True)
class AgentResult:
    session_id: str
    jct_s: float
    segments: int
    completion_tokens: int
    view: dict  # GET /v1/sessions/{id} just before the session was closed


async def run_agent(client, model: str, session_id: str, turns: list[Turn], stream: bool = False,
                    ignore_eos: bool = False, session_api: bool = True, on_call=None,
                    allowed_token_ids: list[int] | None = None) -> AgentResult:
    """Run every turn through `client` (an `openai.AsyncOpenAI`), then end the session. `ignore_eos`: every
    answer has exactly its turn's max_tokens (trace replays). `session_api`: read the session's record from this
    service's /v1/sessions, then close it (so the last call does not say `last`, which would end the session with
    it); False (vLLM's own server with the plugin, or this service, which read `vllm_xargs` alike): the last call's
    `last` flag ends the session, and the result's view is empty. `on_call(prompt_tokens, completion_tokens)` hears
    each finished call's usage. `allowed_token_ids` (vLLM's extension, which this service also takes): answers
    only of these tokens."""
    start = time.monotonic()
    messages: list[dict] = []
    tokens = 0
    for i, turn in enumerate(turns):
        messages.append({"role": "user" if i == 0 else "tool", "content": turn.prompt,
                         **({"tool_call_id": f"call-{i - 1}"} if i else {})})
        xargs = {"tool_category": turn.tool_category} if turn.tool_category else {}
        if i == len(turns) - 1 and not session_api:
            xargs["last"] = 1
        extra = {"session_id": session_id, "tool_category": turn.tool_category, "ignore_eos": ignore_eos,
                 "vllm_xargs": xargs}
        if allowed_token_ids is not None:
            extra["allowed_token_ids"] = allowed_token_ids
        usage = None
        if stream:
            parts = []
            async for chunk in await client.chat.completions.create(model=model, messages=messages,
                                                                     max_tokens=turn.max_tokens, stream=True,
                                                                     extra_body=extra):
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    usage = chunk.usage
            answer = "".join(parts)
        else:
            out = await client.chat.completions.create(model=model, messages=messages, max_tokens=turn.max_tokens,
                                                       extra_body=extra)
            answer = out.choices[0].message.content or ""
            usage = out.usage
        if usage is not None:
            tokens += usage.completion_tokens
            if on_call is not None:
                on_call(usage.prompt_tokens, usage.completion_tokens)
        reply: dict = {"role": "assistant", "content": answer}
        if turn.tool_category:  # the agent decided to call the tool (our random-weight models cannot say so)
            reply["tool_calls"] = [{"id": f"call-{i}", "type": "function",
                                    "function": {"name": turn.tool_category, "arguments": "{}"}}]
        messages.append(reply)
        if turn.tool_category:
            await asyncio.sleep(turn.tool_s)
    jct = time.monotonic() - start
    if not session_api:
        return AgentResult(session_id, jct, len(turns), tokens, {})
    view = (await client.get(f"/sessions/{session_id}", cast_to=object))
    await client.post(f"/sessions/{session_id}/close", cast_to=object)
    return AgentResult(session_id, jct, len(turns), tokens, view)
