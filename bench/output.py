"""Every benchmark leaves the same three files: `<out>.json` (the data), `<out>.md` (a table) and `<out>.png`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_results(out: str | Path, data: dict, markdown: Callable[[dict], str],
                  plot: Callable[[dict, Path], None]) -> str:
    """Write the JSON, the Markdown (returned, for printing) and the plot (`plot(data, stem)`) next to each other."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str))
    md = markdown(data)
    out.with_suffix(".md").write_text(md)
    plot(data, out.with_suffix(""))
    return md
