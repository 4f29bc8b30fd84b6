"""bench.river_stream end to end on a small setting: sessions of two Freedoom WADs stream real segments to the
service."""

import json

import pytest

from bench import river_stream
from bench.stock_server import free_port

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)


def test_sessions_stream_through_the_service(tiny_model, tmp_path):
    port = free_port()
    out = tmp_path / "rs.json"
    assert river_stream.main(["--sessions", "1,2", "--maps", "MAP01,freedoom1:E1M1", "--segments", "2",
                              "--model", str(tiny_model), "--root", str(tmp_path / "river"), "--port", str(port),
                              "--generic-steps", "30", "--finetune-steps", "20", "--cache", str(tmp_path / "cache"),
                              "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    s = data["stream"]
    assert set(data["sweep"]) == {"1", "2"} and data["sweep"]["1"]["segments"] == 2
    assert data["meta"]["maps"] == ["freedoom2:MAP01", "freedoom1:E1M1"]  # the second session plays another WAD
    assert s["sessions"] == 1 and s["segments"] == 2 and s["http_5xx"] == 0 and s["http_4xx"] == 0
    assert s["video_bytes"] > 0 and s["model_fetch_bytes"] > 0  # every client fetched the generic model at least
    assert 20 < s["delivered_psnr_db"] < 60 and s["server_ms_p50"] > 0 and s["lookup_ms_p99"] > 0
    assert all(r["chosen_psnr_db"] == r["psnr_db"] for r in data["rows"] if not r["stalled"])
    # River offline is replayed up to the headline point (here the first, 1 session), on each of its segments
    assert all(20 < r["offline_psnr_db"] < 60 for r in data["rows"] if r["sessions"] == 1)
    assert "offline_psnr_db" in s and "offline_psnr_db" not in data["sweep"]["2"]
    assert {r["session"] for r in data["rows"]} == {"n1-player-0", "n2-player-0", "n2-player-1"}
    assert all(r["server_ms"] >= r["decode_ms"] > 0 for r in data["rows"])
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
