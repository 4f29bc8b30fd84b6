"""Drop-in mode's session bookkeeping: a stock server's calls of one session become one job's segments."""

import pytest

from runtime.engine.job_hints import CallArgs
from runtime.engine.sessions import SessionHints, call_args


def test_a_session_s_calls_become_segments_with_their_context():
    s = SessionHints(idle_s=60)
    first = s.hint("a", prompt_tokens=40, max_tokens=16, args=CallArgs("search"), now=0.0)
    assert (first.job_id, first.seg, first.context_tokens, first.prompt_tokens, first.tools) == ("a", 0, 0, 40, ())
    assert first.tool_category == "search" and first.output_tokens == 16 and not first.last
    s.ended("a", held_tokens=56, now=1.0)  # 40 prompt + 16 output
    second = s.hint("a", prompt_tokens=70, max_tokens=8, args=CallArgs("code", kv_action="swap"), now=5.0)
    # the whole conversation is re-sent: what the first call held is context, the rest is this call's prompt
    assert (second.seg, second.context_tokens, second.prompt_tokens, second.tools) == (1, 56, 14, ("search",))
    assert second.arrival_s == first.arrival_s and second.kv_action == "swap"
    s.ended("a", held_tokens=78, now=6.0)
    last = s.hint("a", prompt_tokens=90, max_tokens=8, args=CallArgs(last=True), now=7.0)
    assert (last.seg, last.tools, last.last) == (2, ("search", "code"), True)
    again = s.hint("a", prompt_tokens=10, max_tokens=8, args=CallArgs(), now=8.0)
    assert again.seg == 0 and again.arrival_s == 8.0  # after its last call, the id starts a new job


def test_silent_sessions_expire_unless_a_call_is_in_flight():
    s = SessionHints(idle_s=10)
    s.hint("quiet", 10, 4, CallArgs("search"), now=0.0)
    s.hint("busy", 10, 4, CallArgs("search"), now=0.0)
    s.ended("quiet", 14, now=1.0)
    assert s.expired(now=5.0, busy=set()) == []
    assert s.expired(now=20.0, busy={"busy"}) == ["quiet"]
    assert s.hint("quiet", 30, 4, CallArgs(), now=21.0).seg == 0  # expired: a new job
    s.forget("busy", arrival_s=99.0)  # another incarnation: kept
    assert s.hint("busy", 30, 4, CallArgs(), now=22.0).seg == 1
    with pytest.raises(ValueError, match="AGENTRIVER_SESSION_IDLE_S"):
        SessionHints(idle_s=0)


def test_the_idle_time_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("AGENTRIVER_SESSION_IDLE_S", "7.5")
    assert SessionHints().idle_s == 7.5
    monkeypatch.setenv("AGENTRIVER_SESSION_IDLE_S", "soon")
    with pytest.raises(ValueError, match="AGENTRIVER_SESSION_IDLE_S must be a number of seconds, got 'soon'"):
        SessionHints()
    monkeypatch.delenv("AGENTRIVER_SESSION_IDLE_S")
    assert SessionHints().idle_s == 300.0


def test_bad_xargs_are_ignored_field_by_field():
    assert call_args({"tool_category": "search", "last": 1, "kv_action": "preserve"}) == CallArgs("search", True,
                                                                                               "preserve")
    assert call_args(None) == CallArgs()
    assert call_args({"tool_category": 3, "last": "yes", "kv_action": "keep"}) == CallArgs()
    assert call_args({"tool_category": "search", "last": 2.0, "kv_action": "swap"}) == CallArgs("search", False, "swap")


def test_both_readers_of_xargs_refuse_the_same_values():
    """The plugin ignores what this runtime's API refuses with a 400, field by field: one contract, two answers."""
    from pydantic import ValidationError

    from deployments.openai_api import VllmXargs

    cases = [{"last": 1}, {"last": True}, {"last": 1.0}, {"last": "1"}, {"last": 2}, {"tool_category": "x" * 64},
             {"tool_category": "x" * 65}, {"tool_category": 3}, {"kv_action": "swap"}, {"kv_action": "keep"},
             {"kv_action": ["swap"]}, {"other": "vLLM's own"}]
    for extra in cases:
        args, problems = CallArgs.read(extra)
        try:
            body = VllmXargs.model_validate(extra)
        except ValidationError as e:
            assert [err["loc"][0] for err in e.errors()] == list(problems), extra
        else:
            assert not problems, extra
            assert (body.tool_category, body.last, body.kv_action) == (args.tool_category, args.last,
                                                                       args.kv_action), extra
