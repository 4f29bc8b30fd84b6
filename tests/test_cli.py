import json
import subprocess
import sys

from agentriver.cli import main
from runtime.agents.trace import write_trace
from tests.conftest import make_table


def test_trace_check_and_sim_on_a_small_trace(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    assert main(["trace", "--mix", "swe", "--jobs", "20", "--rate", "2", "--seed", "1", "--out", str(out)]) == 0
    assert "20 jobs" in capsys.readouterr().out
    assert main(["check", str(out)]) == 0
    assert "valid, 20 jobs" in capsys.readouterr().out
    assert main(["sim", "--trace", str(out), "--policy", "astraea"]) == 0
    text = capsys.readouterr().out
    assert "avg_jct_s" in text and "preserve" in text


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"xx")
    assert main(["check", str(bad)]) == 2
    assert "not a readable Parquet" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.parquet")]) == 2
    assert main(["trace", "--mix", "swe", "--jobs", "0", "--rate", "1", "--out", str(tmp_path / "x")]) == 2
    assert "jobs must be >= 1" in capsys.readouterr().err


def test_module_entry_point_runs(tmp_path):
    rows = [("a", 0, 0.0, 10, 3, "calc", 0.1), ("a", 1, 0.0, 4, 3, "", 0.0)]
    path = tmp_path / "t.parquet"
    write_trace(make_table(rows), path)
    res = subprocess.run([sys.executable, "-m", "agentriver", "bench-sim", "--trace", str(path), "--policies",
                          "fcfs,astraea", "--rate-scales", "1", "--workers", "1", "--out",
                          str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len(json.loads((tmp_path / "r.json").read_text())["rows"]) == 2
