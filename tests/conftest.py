import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from runtime.agents.costmodel import LLAMA3_8B_H100, DeploymentProfile
from runtime.agents.trace import SCHEMA
from runtime.river.dataset import build_dataset, load_pairs
from runtime.river.gameplay import GameplayConfig

# vLLM's engine core runs its model worker inside its own process, not in a second one it spawns: every engine start in
# the suite then imports vLLM once less (~8-13 s of each ~25-s start here), as vLLM's own tests run it. Everything
# the tests check above the worker is the same code; `bench.engine_settings`, which reports where vLLM places the
# worker's threads, sets vLLM's default for its engines, and `VLLM_ENABLE_V1_MULTIPROCESSING=1 make test` runs the
# whole suite on that default, as `make run` and the benchmarks do.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

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


# Two maps, two 1-second segments each at 8.75 fps (9 frames): real ViZDoom frames, real x264, small enough for CI.
SMALL = GameplayConfig(wad="freedoom2", maps=("MAP01", "MAP02"), segments_per_map=2, segment_s=1.0, fps=8.75, seed=1)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return build_dataset(SMALL, scale=2, crf=28, root=tmp_path_factory.mktemp("river"), progress=False)


@pytest.fixture(scope="session")
def pairs(dataset):
    return load_pairs(dataset)


@pytest.fixture(scope="session")
def dataset_x4(dataset):
    """The same recording streamed at x4 (recorded once)."""
    return build_dataset(SMALL, scale=4, crf=28, root=dataset.parents[1], progress=False)


@pytest.fixture(scope="session")
def pairs_x4(dataset_x4):
    return load_pairs(dataset_x4)


@pytest.fixture(scope="session")
def shared_service(tiny_model, pairs_x4, tmp_path_factory) -> dict:
    """The served app (agents and River) on a local Ray with two engines, started once for every test that can
    share it: starting Ray, Serve and the engines takes a minute on 2 cores. {"url", "settings"}."""
    from tests.service import local_service, shared_settings

    settings = shared_settings(tiny_model, pairs_x4, tmp_path_factory.mktemp("shared-service"))
    with local_service(settings) as url:
        yield {"url": url, "settings": settings}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Markers by what a test uses, set as it is collected (before `-m` and pytest-xdist read them): a test of the
    shared service is a `service` test, and every `service` test is in one pytest-xdist group (below)."""
    if "shared_service" in item.fixturenames:
        item.add_marker(pytest.mark.service)
    if item.get_closest_marker("service"):
        item.add_marker(pytest.mark.xdist_group("service"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The shared service's tests run last and together: its Ray stays up until the session ends, and tests that
    start a Ray of their own must run before it. Among them, those that kill its processes (`kills_service`) go
    last, so the others meet the service as it started. Under pytest-xdist (`make test`: `-n 2 --dist loadgroup`)
    the `service` tests are one group, so one worker runs them all in this order, one at a time, as without
    xdist: two Rays, two engines' threads on the same cores, or a test meeting another's service never happen."""
    def group(item: pytest.Item) -> int:
        if "shared_service" not in item.fixturenames:
            return 0
        return 2 if item.get_closest_marker("kills_service") else 1

    items.sort(key=group)
