"""bench.peers: the equal-latency load it reads off a sweep, and a tiny end-to-end run of every check."""

import json
import math

import pytest

from bench import peers, targets


def test_load_at_equal_latency_interpolates_inside_the_sweep():
    loads = [1.0, 2.0, 4.0]
    assert peers.load_at(loads, [10.0, 20.0, 40.0], 30.0) == pytest.approx(3.0)
    assert peers.load_at(loads, [10.0, 20.0, 25.0], 30.0) == 4.0  # never reached: the largest load (a bound)
    assert peers.load_at(loads, [35.0, 40.0, 45.0], 30.0) == 0.0  # over the limit at the lightest load


def test_tiny_run_writes_every_check(tmp_path):
    out = tmp_path / "peers.json"
    assert peers.main(["--jobs", "20", "--loads", "1,16", "--kv-room", "1,4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(c["peer"], c["mix"], c["kv_room"]) for c in data["checks"]] == [
        (c.peer, c.mix, room) for room in (1.0, 4.0) for c in peers.CHECKS]
    for c in data["checks"]:
        assert set(c["avg_jct_s"]) == {c["peer"], c["baseline"]} and c["limit_s"] > c["alone_s"] > 0
        assert all(len(v) == 2 and min(v) > 0 for v in c["avg_jct_s"].values())
        assert (math.isnan(c["ours"]) and c["far_off"] is None) or (c["ours"] > 0 and c["far_off"] in (True, False))
    md = out.with_suffix(".md").read_text()
    assert "| lamps | infercept | infercept | 1x | latency |" in md and "| lamps | infercept | infercept | 4x |" in md
    assert out.with_suffix(".png").stat().st_size > 1000
    lines, misses = targets.check_peers(out)  # one verdict per check; the far-off ones are misses
    assert len(lines) == 2 * len(peers.CHECKS) and len(misses) == sum(c["far_off"] is not False for c in data["checks"])


def test_bad_arguments(capsys):
    for argv, msg in ((["--loads", "0,1"], "loads must be > 0"), (["--latency-factor", "1"], "--latency-factor > 1"),
                      (["--seeds", "x"], "--seeds takes integers"), (["--kv-room", "0"], "each > 0")):
        with pytest.raises(SystemExit):
            peers.parse_args(argv)
        assert msg in capsys.readouterr().err
