"""bench.river_lookup on a small real dataset: every figure present and in range, argument errors named."""

import json

import pytest

from bench import river_lookup


def test_small_run(tmp_path):
    out = tmp_path / "lookup.json"
    assert river_lookup.main(["--maps", "MAP01,MAP02", "--segments", "4", "--segment-s", "1", "--models", "5,20",
                              "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["segments"] == 4 and data["chance"] == 0.5
    assert len(data["retrieval"]) == 3
    for r in data["retrieval"].values():
        assert all(0 <= r[k] <= 1 for k in ("patch", "frame", "segment"))
    assert [c["models"] for c in data["cost"].values()] == [5, 20]
    assert all(0 < c["ms_per_frame_p50"] <= c["ms_per_frame_p99"] for c in data["cost"].values())
    assert data["sr_speed"]["fps"] > 0 and data["sr_speed"]["output"] == [720, 1280]
    assert data["sr_speed"]["parameters"] > 1000
    assert "| 20 | 320 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bad_arguments(capsys):
    for argv, msg in ((["--models", "ten"], "comma-separated integers"),
                      (["--maps", "MAP01,MAP02", "--segments", "3"], ">= 2 per map"),
                      (["--maps", "E1M1"], "not a freedoom2 map")):
        with pytest.raises(SystemExit):
            river_lookup.parse_args(argv)
        assert msg in capsys.readouterr().err
