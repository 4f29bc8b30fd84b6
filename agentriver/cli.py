"""`agentriver` / `python -m agentriver`: traces, single simulations, benchmarks, local models, River's player."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.agents.costmodel import PROFILES, get_profile
from runtime.agents.metrics import summarize
from runtime.agents.policy import POLICIES
from runtime.agents.sim import simulate
from runtime.agents.trace import MIXES, TraceError, generate, jobs_from_table, read_trace, write_trace


def _trace_gen(args: argparse.Namespace) -> int:
    table = generate(args.mix, args.jobs, args.rate, args.seed)
    write_trace(table, args.out)
    jobs = table.column("job_id").unique()
    print(f"wrote {args.out}: {len(jobs)} jobs, {table.num_rows} segments "
          f"(mix={args.mix}, rate={args.rate}/s, seed={args.seed})")
    return 0


def _trace_check(args: argparse.Namespace) -> int:
    table = read_trace(args.file)
    n_jobs = len(table.column("job_id").unique())
    cats = sorted(c for c in table.column("api_category").unique().to_pylist() if c)
    print(f"{args.file}: valid, {n_jobs} jobs, {table.num_rows} segments, tool categories {cats}")
    return 0


def _sim(args: argparse.Namespace) -> int:
    profile = get_profile(args.model)
    table = read_trace(args.trace)
    res = simulate(jobs_from_table(table, args.rate_scale), profile, args.policy, engines=args.engines)
    row = summarize(res, load=args.rate_scale, seed=0)
    width = max(len(k) for k in row)
    for k, v in row.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


def _model(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from runtime.engine.tiny_model import build_model, get_preset

    for name in args.preset:
        preset = get_preset(name)
        out = build_model(preset, Path(args.models_dir) / name, seed=args.seed, force=args.force)
        print(f"{out}: {name} ({preset.params / 1e6:.1f} M parameters, {preset.num_layers} layers x "
              f"{preset.hidden_size}, KV {preset.kv_bytes_per_token} B/token)")
    return 0


def _bench_sim(rest: list[str]) -> int:
    from bench import jct_sim

    return jct_sim.main(rest)


def _river_play(args: argparse.Namespace) -> int:
    """Play a stream with SR, models from the service (`--server`) or a River store (`--store`: a path or URI)."""
    import json
    import os

    from tqdm import tqdm

    from runtime.river.client import HttpModels, Player, StoreModels, VideoWriter, read_stream
    from runtime.river.enhance import Enhancer
    from runtime.river.store import ModelStore
    from runtime.river.train import load_generic

    segments = read_stream(args.stream, args.model_id)
    if args.server:
        source = HttpModels(args.server, os.environ.get("AGENTRIVER_API_KEY"))
    elif args.store and args.generic:
        generic = load_generic(args.generic)
        source = StoreModels(ModelStore(args.store), (generic.state, generic.sr))
    else:
        raise ValueError("--server, or --store with --generic: where the SR models come from")
    player = Player(source, Enhancer(args.runtime, args.threads), session=args.session, game=args.game)
    writer = VideoWriter(args.out) if args.out else None
    try:
        with tqdm(total=len(segments), desc="segments", unit="seg", file=sys.stderr) as bar:
            report = player.play(segments, writer, on_segment=lambda s: bar.update(1))
    finally:
        if writer is not None:
            writer.close()
    print(report.describe())
    for problem in report.refused:
        print(f"refused: {problem}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentriver", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("trace", help="generate a workload trace (Parquet)")
    g.add_argument("--mix", required=True, choices=sorted(MIXES))
    g.add_argument("--jobs", type=int, required=True)
    g.add_argument("--rate", type=float, required=True, help="Poisson arrival rate, jobs/s")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.set_defaults(fn=_trace_gen)

    c = sub.add_parser("check", help="validate a trace file against the public schema")
    c.add_argument("file")
    c.set_defaults(fn=_trace_check)

    s = sub.add_parser("sim", help="simulate one policy on one trace and print its summary row")
    s.add_argument("--trace", required=True)
    s.add_argument("--policy", required=True, choices=list(POLICIES))
    s.add_argument("--model", default="llama3-8b-h100", choices=sorted(PROFILES))
    s.add_argument("--rate-scale", type=float, default=1.0)
    s.add_argument("--engines", type=int, default=1)
    s.set_defaults(fn=_sim)

    m = sub.add_parser("model", help="build local random-weight models + tokenizers (no downloads)")
    m.add_argument("--preset", action="append", required=True, help="tiny or small (repeatable)")
    m.add_argument("--models-dir", default="models")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    m.set_defaults(fn=_model)

    r = sub.add_parser("river-play", help="River's player: decode a stream, super-resolve every frame, report fps")
    r.add_argument("stream", help="a stream directory (manifest.json + H.264 segments) or one H.264 file")
    r.add_argument("--server", help="the service's URL (models and prefetch from /river/v1)")
    r.add_argument("--store", help="a River store: a path or a URI such as s3://bucket/prefix (instead of --server)")
    r.add_argument("--generic", help="the generic model's safetensors (with --store)")
    r.add_argument("--session", help="the session to ask /river/v1/prefetch about")
    r.add_argument("--game", help="the session's game (a new session is sent the game's most used models)")
    r.add_argument("--model-id", type=int, default=0, help="the model for a single video file (default generic)")
    r.add_argument("--runtime", default="auto", choices=["auto", "fp32", "bf16", "compiled"],
                   help="SR runtime; auto: torch-compiled bf16 where the CPU has bf16 instructions, else fp32")
    r.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    r.add_argument("--out", help="write the enhanced video here (H.264)")
    r.add_argument("--json", help="write the per-segment report here")
    r.set_defaults(fn=_river_play)

    sub.add_parser("bench-sim", help="the simulated JCT benchmark (all flags of python -m bench.jct_sim)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench-sim":
        return _bench_sim(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (TraceError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


