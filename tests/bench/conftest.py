import pytest

from runtime.agents.trace import write_trace
from tests.conftest import make_table

# Three jobs, two of them with one tool call each (a: 0.5 s, c: 0.2 s): 64 output tokens in all.
TOOL_TRACE = [("a", 0, 0.0, 120, 16, "search", 0.5), ("a", 1, 0.0, 30, 8, "", 0.0),
              ("b", 0, 0.2, 200, 24, "", 0.0), ("c", 0, 0.3, 60, 8, "calc", 0.2), ("c", 1, 0.3, 20, 8, "", 0.0)]


@pytest.fixture
def tool_trace(tmp_path):
    """TOOL_TRACE as a Parquet trace file: what the real-engine benchmarks replay in their tests."""
    path = tmp_path / "t.parquet"
    write_trace(make_table(TOOL_TRACE), path)
    return path
