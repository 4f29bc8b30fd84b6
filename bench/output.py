"""Every benchmark leaves the same three files: `<out>.json` (the data), `<out>.md` (a table) and `<out>.png`."""

from __future__ import annotations

import json
import sys
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


def command_line(module: str, argv: list[str] | None) -> str:
    """The exact command a result came from, as it is printed first in every table."""
    return f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])


def save_figure(fig, stem: Path) -> None:
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
