"""bench.river and bench.river_headroom end to end in --quick mode (real frames, real training, tiny budgets),
and their argument errors."""

import json

import pytest

from bench import river, river_headroom
from runtime.river.sr import EDSR, SRConfig
from runtime.river.train import TrainConfig, TrainResult


def test_quick_run_writes_every_method_and_a_finished_seed_is_reused(tmp_path, capsys):
    out = tmp_path / "river.json"
    argv = ["--wad", "freedoom2", "--maps", "MAP01", "--quick", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    assert river.main(argv) == 0
    data = json.loads(out.read_text())
    assert river.main(argv) == 0  # the same settings and code: seed 0 is not run again
    assert json.loads(out.read_text())["runs"] == data["runs"] and "seed 0: reusing" in capsys.readouterr().err
    kept = river.run_file(river.parse_args(argv), 0)
    assert kept.exists() and river.run_file(river.parse_args(argv + ["--eval-every", "2"]), 0) != kept
    assert list(data["methods"]) == list(river.METHODS)
    run = data["runs"][0]
    for name, m in data["methods"].items():
        assert 20 < m["psnr_db"]["mean"] < 60 and 0 < m["ssim"]["mean"] <= 1, name
        assert len(run["methods"][name]["psnr"]) == 4 and m["psnr_db"]["std"] == 0  # one seed
    assert run["methods"]["per_segment"]["finetunes"] == 4 and run["methods"]["per_video"]["finetunes"] == 1
    for untrained in ("bicubic", "generic_other", "generic_game"):
        assert run["methods"][untrained]["train_s"] == 0
    assert run["methods"]["online"]["finetunes"] >= 1 and run["methods"]["online"]["train_s"] > 0
    for name in ("river_first", "river"):
        assert 0 <= run["methods"][name]["finetunes"] <= 4 and len(run[f"{name}_decisions"]) == 4
    assert run["lookup_ms_p50"] > 0 and 0 <= run["prefetch_hit_top3"] <= 1
    # the earlier session trained where the empty store missed; `river` starts from what it stored
    assert run["earlier"]["finetunes"] >= 1 and run["earlier"]["train_s"] > 0
    assert run["earlier"]["models"] >= 1 and run["river_decisions"][0]["voted"] > 0
    assert run["earlier"]["transitions_learned"] == 3  # the prefetcher kept its transitions (4 segments)
    assert run["river_first_decisions"][0]["voted"] == -1
    assert {t["baseline"] for t in data["targets"]} >= {"generic_other", "generic_game", "online", "per_segment"}
    md = out.with_suffix(".md").read_text()
    assert "| river |" in md and "| river >= generic_game +1.00 dB: measured" in md and "| river_first |" in md
    assert out.with_suffix(".png").stat().st_size > 1000


def test_online_training_serves_an_update_only_after_its_training_time(pairs):
    """LiveNAS's model in stream time: the first segments are played with the generic model; an update is
    served only from the segment arriving after it finished."""
    sr = SRConfig(blocks=1, channels=4, scale=2)
    base = TrainResult(EDSR(sr).state_dict(), sr, 0, 0.0, 0.0, 0)
    live = river.LiveTraining(base, TrainConfig(steps=3, batch=2), window=1)
    first = live.model_at(0.0, pairs[0])
    assert live.updates == 1 and live.pending is not None  # started at once on segment 0, not served yet
    ready = live.pending[0]
    assert live.model_at(ready / 2, pairs[1]) is first  # still training: the same model
    later = live.model_at(ready + 100.0, pairs[2])
    assert later is not first and live.total_s > 0
    assert live.updates == 3  # one more on segment 1 (ended long before), one on segment 2: only on new data


def test_headroom_quick_run(tmp_path):
    out = tmp_path / "headroom.json"
    assert river_headroom.main(["--quick", "--maps", "MAP01", "--cache", str(tmp_path / "cache"),
                                "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    names = [s["name"] for s in data["settings"]]
    assert names == ["x4 2x8 crf28", "x4 2x8 crf28 cosine", "x4 2x8 crf28 uniform"]
    for s in data["settings"]:
        assert s["client_ms_per_frame"] > 0 and s["params"] > 0 and len(s["segments"]) == 2
        for b in s["budgets"].values():
            assert b["train_s"] > 0 and abs(b["gain_vs_game_db"]) < 10
    assert sorted(map(int, data["settings"][0]["budgets"])) == [10, 20]  # every --every steps of one run
    assert out.with_suffix(".png").stat().st_size > 1000 and "| x4 2x8 crf28 |" in out.with_suffix(".md").read_text()


def test_bad_arguments(capsys):
    for argv, msg in ((["--maps", "MAP10", "--train-maps", "MAP10"], "must not include evaluated maps"),
                      (["--wad", "doom2"], "wad must be one of"),
                      (["--wad", "freedoom1", "--maps", "MAP01"], "not a freedoom1 map"),
                      (["--segments", "0"], ">= 1"), (["--seeds", "a"], "--seeds takes"),
                      (["--earlier", "0"], "--earlier must be >= 1"),
                      (["--scale", "3"], "x3 does not divide the frame size 1280x720"),
                      (["--scale", "9"], "scale must be an integer in 2..8"),
                      (["--model", "0x16"], "blocks must be >= 1")):
        with pytest.raises(SystemExit):
            river.parse_args(argv)
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):
        river_headroom.parse_args(["--models", "4x2"])
    assert "channels >= 4" in capsys.readouterr().err


def test_natural_pairs_are_degraded_like_the_stream():
    from runtime.river.natural import IMAGES, natural_pairs

    pairs = natural_pairs(4, 28)
    assert len(pairs) == len(IMAGES)
    for lr, hr in pairs:
        assert lr.shape[0] == hr.shape[0] == 1 and hr.shape[1] == lr.shape[1] * 4 and hr.shape[2] == lr.shape[2] * 4

