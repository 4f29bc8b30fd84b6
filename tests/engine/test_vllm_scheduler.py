"""The policy plugin re-orders a real vLLM engine's waiting queue with the simulator's policy objects."""

import json
from pathlib import Path

import pytest

from runtime.engine.job_hints import HINT_TYPE, JobHint, hint_of
from tests.conftest import run_script

SCRIPT = Path(__file__).with_name("order_script.py")


def _completion_order(model, policy, tmp_path) -> dict:
    out = tmp_path / f"{policy}.json"
    run_script(SCRIPT, model, policy, out)
    result = json.loads(out.read_text())
    assert result["queued_while_blocked"], "set-up: the blocker finished before the others were queued"
    return result


@pytest.mark.service
def test_fcfs_keeps_vllms_order_and_astraea_serves_short_segments_first(tiny_model, tmp_path):
    """...and orders with the job's cluster-wide MLFQ level from the hint: a short segment of a job the cluster
    demoted (compute-heavy on other engines) waits behind the others."""
    assert _completion_order(tiny_model, "fcfs", tmp_path)["order"] == ["blocker", "long", "short1", "short2"]
    astraea = _completion_order(tiny_model, "astraea", tmp_path)
    assert astraea["order"] == ["blocker", "short1", "short2", "long"]
    assert astraea["with_levels"] == ["blocker", "short2", "long", "short1"]


def test_hint_round_trip_and_validation():
    hint = JobHint(job_id="j", arrival_s=1.0, seg=2, context_tokens=300, prompt_tokens=20, output_tokens=8,
                   tools=("search", "code"), level=2, waited_s=3.5, forecast_segments=2.0)
    env = hint.envelope()
    assert env.actions[0].action_type == HINT_TYPE

    class Req:
        kv_hints = env

    assert hint_of(Req()) == hint
    Req.kv_hints = None
    assert hint_of(Req()) is None
    with pytest.raises(ValueError, match="output_tokens >= 1"):
        JobHint(job_id="j", arrival_s=0.0, seg=0, context_tokens=0, prompt_tokens=1, output_tokens=0)
    with pytest.raises(ValueError, match="job_id"):
        JobHint(job_id="", arrival_s=0.0, seg=0, context_tokens=0, prompt_tokens=1, output_tokens=1)
    with pytest.raises(ValueError, match="at most one category per earlier segment"):
        JobHint(job_id="j", arrival_s=0.0, seg=1, context_tokens=9, prompt_tokens=1, output_tokens=1, tools=("a", "b"))
