"""`make bench`: re-run every committed simulator benchmark into bench/results/ (same commands as its README)."""

from __future__ import annotations

import shlex
import sys

from bench import jct_sim

ALL = "fcfs,sjf,plas,infercept,continuum,lamps,astraea,clairvoyant"
COMMANDS = {
    "infercept": f"--mix infercept --jobs 1000 --rate 5 --policies {ALL} --rate-scales 0.5,1,2,4,8 --seeds 0,1,2 "
                 "--output-estimator oracle,online --out bench/results/jct_sim_infercept.json",
    "swe": f"--mix swe --jobs 500 --rate 0.5 --policies {ALL} --rate-scales 0.5,1,1.25,1.5,2,4,8 --seeds 0,1,2 "
           "--out bench/results/jct_sim_swe.json",
    "bfcl": f"--mix bfcl --jobs 1000 --rate 2.5 --policies {ALL} --rate-scales 1,2,4,6,8,16 --seeds 0,1,2 "
            "--out bench/results/jct_sim_bfcl.json",
    "mixed": f"--mix mixed --jobs 1000 --rate 0.5 --policies {ALL} --rate-scales 0.5,1,2,4,8 --seeds 0,1,2 "
             "--out bench/results/jct_sim_mixed.json",
    "infercept_70b": f"--mix infercept --jobs 1000 --rate 5 --policies {ALL} --rate-scales 0.5,1,2,4,8 --seeds 0 "
                     "--model llama3-70b-4xh100 --out bench/results/jct_sim_infercept_70b.json",
}


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(COMMANDS)
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(COMMANDS)}")
    for name in names:
        print(f"== {name}: python -m bench.jct_sim {COMMANDS[name]}", flush=True)
        rc = jct_sim.main(shlex.split(COMMANDS[name]))
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
