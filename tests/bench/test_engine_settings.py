"""bench.engine_settings on real vLLM (CPU) engines: the setting that made a configured KV connector look like a
1.5x faster engine is the cores vLLM reserves, and fixing VLLM_CPU_NUM_OF_RESERVED_CPU removes the difference."""

import json

import pytest

from bench import engine_settings

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)


def test_a_connector_changes_the_workers_cores_only_through_the_reservation(tiny_model, tmp_path):
    out = tmp_path / "es.json"
    assert engine_settings.main(["--model", str(tiny_model), "--configs", "stock + 0 reserved cores,"
                                 "connector + 1 reserved core", "--requests", "2", "--prompt", "32", "--tokens", "4",
                                 "--repeats", "1", "--max-model-len", "256", "--eager", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["configs"]
    free, connector = rows["stock + 0 reserved cores"], rows["connector + 1 reserved core"]
    assert free["worker_cores"] and connector["worker_cores"]
    # the reservation, not the connector, decides how many cores the model's threads get
    assert len(free["worker_cores"]) == len(connector["worker_cores"]) + 1
    assert all(r["step_ms"] > 0 and r["enforce_eager"] is True for r in rows.values())  # --eager: no compile wait
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
