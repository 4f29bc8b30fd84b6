"""Which shard owns a session, which engines a shard plans for, and how the shards' views and metrics are shown as
one (pure Python: the service that uses them is tested in test_sharded_service.py)."""

import zlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.serving.config import ServeSettings
from runtime.serving.metrics import SchedulerMetrics, merge_metrics
from runtime.serving.shards import merge_cluster_views, shard_engines, shard_of


def test_a_session_has_one_shard_everywhere_and_sessions_spread():
    assert shard_of("agent-7", 4) == zlib.crc32(b"agent-7") % 4  # not Python's per-process randomised hash
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"session-{i}", 4)] += 1
    assert min(counts) > 900 and max(counts) < 1100, counts
    assert {shard_of(f"session-{i}", 1) for i in range(100)} == {0}


def test_shards_split_the_fleet_without_overlap():
    parts = [list(shard_engines(10, 3, k)) for k in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="scheduler_shards"):
        shard_engines(2, 3, 0)


def test_settings_refuse_more_shards_than_engines(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert ServeSettings(model=str(tmp_path), engines=4, scheduler_shards=2).scheduler_shards == 2
    with pytest.raises(ValueError, match="scheduler_shards: 3 shards need at least as many engines"):
        ServeSettings(model=str(tmp_path), engines=2, scheduler_shards=3)


def test_cluster_views_merge_in_fleet_order():
    def view(shard, indices, ready, sessions):
        return {"policy": "astraea", "max_model_len": 1024, "ready": ready, "sessions": sessions,
                "engines": [{"name": f"e{i}", "index": i, "shard": shard} for i in indices]}

    merged = merge_cluster_views([view(0, [0, 2], 1, 5), view(1, [1, 3], 2, 7)])
    assert [e["index"] for e in merged["engines"]] == [0, 1, 2, 3]
    assert (merged["ready"], merged["sessions"], merged["shards"], merged["max_model_len"]) == (3, 12, 2, 1024)


def test_metrics_of_shards_are_one_exposition_labelled_by_shard():
    shards = [SchedulerMetrics(), SchedulerMetrics()]
    for k, m in enumerate(shards):
        m.sessions.set(3 + k)
        m.jct.observe(2.0 + 10 * k)
        m.engines.reports[f"agentriver-engine-{k}"] = {"alive": True, "kv_usage": 0.5, "running": 1, "waiting": 0,
                                                       "kv_events": [(("preserve", "tool"), 2 + k)]}
    assert merge_metrics([shards[0].text()]) == shards[0].text()
    families = {f.name: f for f in text_string_to_metric_families(merge_metrics([m.text() for m in shards]).decode())}
    sessions = {s.labels["shard"]: s.value for s in families["agentriver_sessions"].samples}
    assert sessions == {"0": 3.0, "1": 4.0}
    counts = [s for s in families["agentriver_job_completion_seconds"].samples if s.name.endswith("_count")]
    assert sorted((s.labels["shard"], s.value) for s in counts) == [("0", 1.0), ("1", 1.0)]
    kv = {(s.labels["engine"], s.labels["shard"]): s.value for s in families["agentriver_kv_decisions"].samples}
    assert kv == {("agentriver-engine-0", "0"): 2.0, ("agentriver-engine-1", "1"): 3.0}
