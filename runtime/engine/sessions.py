"""Drop-in mode: jobs from the stock vLLM OpenAI server's own session identity, no Ray and no kv_hints.

vLLM 0.32's server carries a stable `session_id` (body field or `X-Session-ID` header) into every `Request` the
scheduler sees, and passes `vllm_xargs` through as `sampling_params.extra_args`. That is enough to rebuild what
the Ray runtime sends in a `JobHint`: a session is a job, each call a segment, and its caller may say which tool
the call ends in and whether it is the last (`vllm_xargs: {"tool_category": "search", "last": 1}`). A chat call
re-sends the whole conversation, so a segment's context is what the session's previous call held (its prompt and
output) and its own prompt is the rest. A session that stops calling expires after `idle_s` (its mirror, pin and
host copy are freed by the scheduler). Requests without a session are plain one-shot requests.

Bad `vllm_xargs` values cannot be refused here (the stock server has already answered the HTTP request), so they
are logged and ignored: the call is scheduled as a call with no tool information.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vllm.logger import init_logger

from runtime.engine.job_hints import CallArgs, JobHint

SESSION_IDLE_ENV = "AGENTRIVER_SESSION_IDLE_S"  # seconds a session may stay silent before its state is freed
DEFAULT_IDLE_S = 300.0
log = init_logger(__name__)


def call_args(extra: dict | None) -> CallArgs:
    """Read `vllm_xargs`; a value of the wrong kind is logged with its field and ignored."""
    args, problems = CallArgs.read(extra)
    for name, problem in problems.items():
        log.warning("vllm_xargs.%s %s, got %r: ignored", name, problem, extra[name])
    return args


@dataclass
class _Session:
    arrival_s: float
    seg: int = -1  # the latest segment's index
    tools: list[str] = field(default_factory=list)  # tool categories the earlier segments ended in
    tool_category: str = ""  # the tool the latest segment ends in
    held_tokens: int = 0  # prompt + output of the latest segment: the next call's context
    seen_s: float = 0.0  # the latest call's arrival or end


class SessionHints:
    """Per-session bookkeeping that turns a stock server's calls into `JobHint`s."""

    def __init__(self, idle_s: float | None = None):
        if idle_s is None:
            raw = os.environ.get(SESSION_IDLE_ENV, "")
            try:
                idle_s = float(raw) if raw else DEFAULT_IDLE_S
            except ValueError:
                raise ValueError(f"{SESSION_IDLE_ENV} must be a number of seconds, got {raw!r}") from None
        self.idle_s = idle_s
        if self.idle_s <= 0:
            raise ValueError(f"{SESSION_IDLE_ENV} must be > 0 seconds, got {self.idle_s}")
        self._sessions: dict[str, _Session] = {}

    def hint(self, session_id: str, prompt_tokens: int, max_tokens: int, args: CallArgs, now: float) -> JobHint:
        """The hint of a new call of `session_id` with `prompt_tokens` in its (whole-conversation) prompt."""
        s = self._sessions.get(session_id)
        if s is None:
            s = self._sessions[session_id] = _Session(arrival_s=now)
        elif s.seg >= 0:
            s.tools.append(s.tool_category)
        s.seg += 1
        context = min(s.held_tokens, prompt_tokens)
        hint = JobHint(job_id=session_id, arrival_s=s.arrival_s, seg=s.seg, context_tokens=context,
                       prompt_tokens=prompt_tokens - context, output_tokens=max(1, max_tokens),
                       tools=tuple(s.tools), tool_category=args.tool_category, last=args.last,
                       kv_action=args.kv_action)
        s.tool_category, s.seen_s = args.tool_category, now
        if args.last:  # the job ends with this call: the next call of this id starts a new one
            del self._sessions[session_id]
        return hint

    def ended(self, session_id: str, held_tokens: int, now: float) -> None:
        """A call of the session finished holding `held_tokens` (prompt + output); its idle time starts now."""
        s = self._sessions.get(session_id)
        if s is not None:
            s.held_tokens, s.seen_s = held_tokens, now

    def __len__(self) -> int:
        return len(self._sessions)

    def forget(self, session_id: str, arrival_s: float) -> None:
        """The scheduler dropped the job (ended, aborted, replaced): the session's next call starts a new one. Only
        the incarnation that arrived at `arrival_s`: a newer session of that id stays."""
        s = self._sessions.get(session_id)
        if s is not None and s.arrival_s == arrival_s:
            del self._sessions[session_id]

    def expired(self, now: float, busy: set[str]) -> list[str]:
        """Sessions silent for longer than `idle_s` (and with no call in flight): dropped here, returned so the
        scheduler frees what it holds for them."""
        gone = [sid for sid, s in self._sessions.items() if sid not in busy and now - s.seen_s > self.idle_s]
        for sid in gone:
            del self._sessions[sid]
        return gone
