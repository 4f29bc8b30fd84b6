"""KV across tool calls on a real vLLM (CPU build) engine: preserve (pin), swap (HostSwapConnector) and discard,
memory pressure, error paths and shutdown. One engine for the module (kv_script.py)."""

import json
from pathlib import Path

import pytest

from runtime.engine.job_hints import JobHint
from tests.conftest import run_script

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)

SCRIPT = Path(__file__).with_name("kv_script.py")


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("kv")
    run_script(SCRIPT, tiny_model, d / "kv.jsonl", d / "out.json")
    events = [json.loads(line) for line in (d / "kv.jsonl").read_text().splitlines()]
    return json.loads((d / "out.json").read_text()), events


def test_outputs_identical_whether_kv_was_preserved_swapped_or_discarded(run):
    out, _ = run
    paths = out["paths"]
    assert all(len(seg) == 16 for seg in paths["preserve"]["outputs"])
    assert paths["preserve"]["outputs"] == paths["swap"]["outputs"] == paths["discard"]["outputs"]


def test_each_path_reused_what_it_kept(run):
    """The prefix cache was flushed during every tool call, so a resumed segment could reuse only what the KV
    manager kept: the pinned blocks (the flush fails while they are held), the host copy, or nothing."""
    out, events = run
    assert out["paths"]["preserve"]["flushed"] == [False, False]
    assert out["paths"]["swap"]["flushed"] == [True, True]
    assert out["paths"]["discard"]["flushed"] == [True, True]
    resumes = {(e["job"], e["seg"]): e for e in events if e["event"] == "resume"}
    decided = {(e["job"], e["seg"]): e for e in events if e["cause"] == "tool_call"}
    for job in ("preserve", "swap", "discard"):
        for seg in (1, 2):
            assert decided[(job, seg - 1)]["event"] == job
            kept = decided[(job, seg - 1)]["tokens"] // 32 * 32  # whole blocks
            r = resumes[(job, seg)]
            assert r["cause"] == "from_" + {"preserve": "preserved", "swap": "swapped", "discard": "discarded"}[job]
            assert r["tokens"] == (0 if job == "discard" else kept)
            assert r["host_tokens"] == (kept if job == "swap" else 0)


def test_memory_pressure_releases_pins_instead_of_deadlocking(run):
    out, events = run
    assert out["pins_done_at_big"] == 0  # the big job ran while all four jobs were still in their tool calls
    assert out["big_s"] < 8.0  # ... well before those calls ended
    released = [e for e in events if e["cause"] == "pressure"]
    assert released and all(e["job"].startswith("pin") and e["event"] in ("swap", "discard") for e in released)
    for e in released:
        resumed = next(r for r in events if r["event"] == "resume" and r["job"] == e["job"])
        assert resumed["cause"] == ("from_swapped" if e["event"] == "swap" else "from_discarded")


def test_errors_come_back_as_clear_exceptions(run):
    out, _ = run
    err = out["errors"]
    assert err["too_long"].startswith("ValueError") and "max_model_len 1024" in err["too_long"]
    assert err["bad_max_tokens"].startswith("ValueError") and "max_tokens" in err["bad_max_tokens"]
    assert err["moved_job"] == "no error"  # its earlier segments ran on another engine
    # a segment sent again after its caller gave up, and a new job under a closed job's id, both run
    assert err["repeated_segment"] == "no error" and err["reused_job_id"] == "no error"
    assert err["concurrent_segment"].startswith("JobBusyError") and "twin" in err["concurrent_segment"]
    assert "maximum context length is 1024" in err["vllm_too_long"]
    assert err["still_serves"]


def test_shutdown_leaves_no_stray_processes(run):
    out, _ = run
    # Python's multiprocessing resource tracker is the parent's own helper and ends with it.
    assert [p for p in out["children_after_shutdown"] if "resource_tracker" not in p] == []


def test_job_hint_rejects_unknown_kv_action():
    with pytest.raises(ValueError, match="kv_action must be one of"):
        JobHint("j", 0.0, 0, 0, 10, 5, kv_action="keep")
