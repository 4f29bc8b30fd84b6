"""The vLLM adapter and its scheduler plugin on a real vLLM (CPU build) engine."""

import json
from pathlib import Path

import pytest

from runtime.agents.costmodel import fit
from runtime.engine.vllm_engine import EngineConfig
from runtime.engine.vllm_scheduler import check_vllm_version, read_step_log
from tests.conftest import run_script

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)

SCRIPT = Path(__file__).with_name("engine_script.py")


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    run_script(SCRIPT, tiny_model, d / "steps.jsonl", d / "out.json")
    return json.loads((d / "out.json").read_text()), read_step_log(d / "steps.jsonl")


def test_segments_generate_exactly_and_deterministically(run):
    out, _ = run
    assert [len(t) for t in out["first"]] == [12] * 5
    assert out["again"] == out["first"][:2]  # greedy, and a prefix-cache hit changes nothing


def test_a_caller_that_wants_the_answer_whole_gets_it_in_one_piece(run):
    out, _ = run
    assert out["whole"] == [[out["first"][2], "length"]]


def test_step_log_accounts_for_every_token(run):
    out, steps = run
    assert len(steps) >= 11  # at least one step per generated position
    assert sum(s.decode_seqs for s in steps) == 8 * 11  # the first token of each request comes with its prefill
    prefilled = sum(s.prefill_tokens for s in steps)
    assert 0 < prefilled <= out["prompt_tokens"] + 2 * 60  # the repeats hit the prefix cache
    assert all(s.wall_s > 0 for s in steps)
    cost = fit(steps).cost
    assert min(cost.base_s, cost.token_s, cost.kv_read_s, cost.attn_pair_s) >= 0 and cost.base_s > 0


def test_version_and_config_checks(tmp_path):
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.x, found 0\.31\.2"):
        check_vllm_version("0.31.2")
    with pytest.raises(FileNotFoundError, match="make model"):
        EngineConfig(model=str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="multiple of 32"):
        EngineConfig(model=str(tmp_path), block_size=16)
    with pytest.raises(ValueError, match="cannot hold one request"):
        EngineConfig(model=str(tmp_path), kv_blocks=4, max_model_len=1024)
    with pytest.raises(ValueError, match="unknown scheduler plugin"):
        EngineConfig(model=str(tmp_path), plugin="lottery")
    with pytest.raises(ValueError, match="reserved_cpus must be >= 0"):
        EngineConfig(model=str(tmp_path), reserved_cpus=-1)
