"""bench.river end to end in --quick mode (real frames, real training, tiny budgets), and its argument errors."""

import json

import pytest

from bench import river


def test_quick_run_writes_every_method(tmp_path):
    out = tmp_path / "river.json"
    assert river.main(["--wad", "freedoom2", "--maps", "MAP01", "--quick", "--cache", str(tmp_path / "cache"),
                       "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data["methods"]) == list(river.METHODS)
    for name, m in data["methods"].items():
        assert 20 < m["psnr_db"] < 60 and 0 < m["ssim"] <= 1, name
        assert len(data["per_segment_psnr"][name]) == 4
    assert data["methods"]["per_segment"]["finetunes"] == 4
    assert data["methods"]["bicubic"]["train_s"] == 0 and data["methods"]["per_video"]["finetunes"] == 1
    r = data["methods"]["river"]
    assert 0 <= r["finetunes"] <= 4 and r["lookup_ms_p50"] > 0 and 0 <= r["prefetch_hit_top3"] <= 1
    assert len(data["river_decisions"]) == 4
    assert "| river |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bad_arguments(capsys):
    for argv, msg in ((["--maps", "MAP10", "--train-maps", "MAP10"], "must not include evaluated maps"),
                      (["--wad", "doom2"], "wad must be one of"),
                      (["--wad", "freedoom1", "--maps", "MAP01"], "not a freedoom1 map"),
                      (["--segments", "0"], ">= 1")):
        with pytest.raises(SystemExit):
            river.parse_args(argv)
        assert msg in capsys.readouterr().err
