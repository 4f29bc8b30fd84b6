import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from runtime.agents.costmodel import LLAMA3_8B_H100, DeploymentProfile
from runtime.agents.trace import SCHEMA

# The 8B/H100 step cost with a KV pool small enough that memory pressure is constant.
SMALL_PROFILE = replace(LLAMA3_8B_H100, name="tiny-kv", gpu_kv_tokens=6144, cpu_kv_tokens=4096, max_num_seqs=16,
                        max_batched_tokens=1024, max_model_len=4096)


@pytest.fixture
def small_profile() -> DeploymentProfile:
    return SMALL_PROFILE


def make_table(rows: list[tuple]) -> pa.Table:
    """rows: (job_id, seg_index, arrival_s, prompt_tokens, output_tokens, api_category, api_time_s)."""
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in SCHEMA]
    return pa.table({f.name: pa.array(list(c), f.type) for f, c in zip(SCHEMA, cols, strict=True)})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The `tiny` preset, built once per test session (real vLLM serves it in the engine tests)."""
    from runtime.engine.tiny_model import build_model

    return build_model("tiny", tmp_path_factory.mktemp("models") / "tiny")


def run_script(script: Path, *args) -> None:
    """Run a test helper script in its own process (vLLM's spawned engine core needs a __main__ guard)."""
    res = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=420,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
