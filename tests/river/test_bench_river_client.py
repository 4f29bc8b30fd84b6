"""bench.river_client on a tiny run: real Freedoom segments played by River's player on two runtimes."""

import json

from bench import river_client


def test_client_benchmark_reports_fps_latency_and_a_still(tmp_path):
    out = tmp_path / "rc.json"
    assert river_client.main(["--maps", "MAP01", "--train-maps", "MAP03", "--segments", "2", "--segment-s", "1",
                              "--runtimes", "fp32,bf16", "--sizes", "1x4", "--sweep-runtime", "bf16",
                              "--generic-steps", "5", "--finetune-steps", "5", "--cache", str(tmp_path / "cache"),
                              "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    s = data["summary"]
    assert set(data["runtimes"]) == {"fp32", "bf16"} and set(data["sizes"]) == {"1x4"}
    assert s["runtime"] == "fp32" and s["fps"] > 0 and s["frames"] == 18  # no compiled run: the first runtime
    for r in data["runtimes"].values():
        assert r["stalls"] == 0 and 20 < r["psnr_db"] < 60 and r["frame_ms_p99"] >= r["sr_ms_p50"] > 0
    assert s["still"]["river_db"] > 0 and (tmp_path / "rc_still.png").exists()
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
