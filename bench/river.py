"""River against its peers on the same game segments.

    python -m bench.river --wad freedoom2 --maps MAP01,MAP02,MAP03 --segments 24 --out river.json

Methods: `bicubic`; `generic` (one model trained on other maps); `per_video` (NAS-style: one fine-tune on the
whole session); `per_segment` (LiveNAS-style upper bound: every segment fine-tuned); `river` (reuse through the
model store, fine-tune on a quality-gate miss, segments in stream order). River's fine-tunes run on one local
trainer and become usable only when they would have finished in stream time (segment i arrives at i x segment
length; a fine-tune is ready its measured training seconds after submission), so a segment never waits for one.
PSNR/SSIM are on the Y channel with a 2-pixel border crop, over every `--eval-every`-th frame of each segment.
Writes the JSON, a Markdown table and two plots (PSNR per segment per method; cumulative training seconds).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.output import command_line, save_figure, write_results
from runtime.river.dataset import build_dataset, load_pairs
from runtime.river.gameplay import GameplayConfig
from runtime.river.online import GateConfig, OnlineRiver
from runtime.river.prefetch import PrefetchTracker
from runtime.river.sr import SRConfig, psnr_y, ssim_y, upscale
from runtime.river.store import ModelStore
from runtime.river.train import TrainConfig, finetune, generic_model, model_from_state

METHODS = ("bicubic", "generic", "per_video", "per_segment", "river")
TRAIN_MAPS = {"freedoom2": "MAP10,MAP11", "freedoom1": "E3M1,E3M2"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.river", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wad", default="freedoom2")
    p.add_argument("--maps", default="MAP01,MAP02,MAP03", help="evaluated maps, played in this order")
    p.add_argument("--train-maps", default=None, help="maps the generic model is trained on (never evaluated)")
    p.add_argument("--segments", type=int, default=24, help="evaluated segments, split evenly over the maps")
    p.add_argument("--segment-s", type=float, default=2.0)
    p.add_argument("--fps", type=float, default=8.75)
    p.add_argument("--crf", type=int, default=28)
    p.add_argument("--steps", type=int, default=300, help="steps of one fine-tune")
    p.add_argument("--generic-steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=3, help="evaluate every n-th frame")
    p.add_argument("--target-gain", type=float, default=GateConfig().target_gain_db,
                   help="river's quality gate, dB over bicubic (see GateConfig)")
    p.add_argument("--quick", action="store_true", help="4 short segments and tiny budgets (CI)")
    p.add_argument("--cache", default="build/river")
    p.add_argument("--out", default="river.json")
    args = p.parse_args(argv)
    if args.quick:
        args.segments, args.segment_s, args.steps, args.generic_steps = 4, 1.0, 30, 30
    args.map_list = [m for m in args.maps.split(",") if m]
    args.train_list = [m for m in (args.train_maps or TRAIN_MAPS.get(args.wad, "")).split(",") if m]
    overlap = set(args.map_list) & set(args.train_list)
    if overlap:
        p.error(f"--train-maps must not include evaluated maps, both have {sorted(overlap)}")
    if args.segments < 1 or args.eval_every < 1 or args.steps < 1:
        p.error("--segments, --eval-every and --steps must be >= 1")
    try:
        args.eval_cfg = GameplayConfig(args.wad, tuple(args.map_list), math.ceil(args.segments / len(args.map_list)),
                                       args.segment_s, args.fps, seed=0)
        args.train_cfg = GameplayConfig(args.wad, tuple(args.train_list), 2, args.segment_s, args.fps, seed=100)
    except ValueError as e:
        p.error(str(e))
    return args


class _ReadyAt(Future):
    """A finished fine-tune that reports done() only once the stream clock reaches its ready time."""

    def __init__(self, result, clock: StreamClockTrainer, ready_at: float):
        super().__init__()
        self.set_result(result)
        self._clock, self._ready_at = clock, ready_at

    def done(self) -> bool:
        return self._clock.now >= self._ready_at


class StreamClockTrainer:
    """Trains at once (this process) but reports a fine-tune done only once the stream clock has passed its
    submission time plus its measured training seconds."""

    def __init__(self):
        self.now = 0.0
        self.total_s = 0.0
        self.count = 0

    def submit(self, base, sr, pairs, cfg) -> Future:
        result = finetune(base, sr, pairs, cfg)
        self.total_s += result.seconds
        self.count += 1
        return _ReadyAt(result, self, self.now + result.seconds)


def score(model, pair, every: int) -> tuple[float, float]:
    lo, hi = pair.lr[::every], pair.hr[::every]
    sr = upscale(model, lo)
    return psnr_y(sr, hi), ssim_y(sr, hi)


def run(args) -> dict:
    cache = Path(args.cache)
    pairs = load_pairs(build_dataset(args.eval_cfg, args.crf, cache / "datasets"))[: args.segments]
    train_index = build_dataset(args.train_cfg, args.crf, cache / "datasets")
    sr = SRConfig()
    generic = generic_model(lambda: [(p.lr, p.hr) for p in load_pairs(train_index)],
                            {"index": str(train_index.parent.name)}, sr, TrainConfig(steps=args.generic_steps),
                            cache / "models")
    generic_net = model_from_state(generic.state, sr)
    ft = TrainConfig(steps=args.steps)
    res = {m: {"psnr": [], "ssim": [], "train_s": 0.0, "finetunes": 0, "cum_train_s": []} for m in METHODS}

    def record(method, model, pair):
        p, s = score(model, pair, args.eval_every)
        res[method]["psnr"].append(p)
        res[method]["ssim"].append(s)
        res[method]["cum_train_s"].append(res[method]["train_s"])

    video = finetune(generic.state, sr, [(p.lr, p.hr) for p in pairs], TrainConfig(steps=args.steps * 4))
    res["per_video"].update(train_s=video.seconds, finetunes=1)
    video_net = model_from_state(video.state, sr)
    trainer = StreamClockTrainer()
    lookup_ms, decisions = [], []
    prefetch = PrefetchTracker(k=3)
    with tempfile.TemporaryDirectory() as store_dir:
        river = OnlineRiver(ModelStore(store_dir), generic, trainer, gate=GateConfig(target_gain_db=args.target_gain),
                            finetune=ft)
        for i, pair in enumerate(tqdm(pairs, desc="segments", unit="segment", file=sys.stderr)):
            record("bicubic", None, pair)
            record("generic", generic_net, pair)
            record("per_video", video_net, pair)
            own = finetune(generic.state, sr, [(pair.lr, pair.hr)], ft)
            res["per_segment"]["train_s"] += own.seconds
            res["per_segment"]["finetunes"] += 1
            record("per_segment", model_from_state(own.state, sr), pair)
            trainer.now = i * args.segment_s
            river.collect()
            d = river.process(pair.segment_id, pair.lr, pair.hr)
            decisions.append({"segment": pair.segment_id, "model": d.model_id, "voted": d.voted_id,
                              "gain_db": d.gain_db, "finetune": d.finetune_scheduled})
            lookup_ms.append(d.lookup_ms / len(pair.lr))
            prefetch.use("session", args.wad, d.model_id)
            res["river"]["train_s"], res["river"]["finetunes"] = trainer.total_s, trainer.count
            record("river", river.model(d.model_id), pair)
        store_size = len(river.store)
    out = {"methods": {}, "per_segment_psnr": {m: res[m]["psnr"] for m in METHODS},
           "cum_train_s": {m: res[m]["cum_train_s"] for m in METHODS}, "river_decisions": decisions,
           "segments": [p.segment_id for p in pairs], "river_store_models": store_size}
    for m in METHODS:
        out["methods"][m] = {"psnr_db": float(np.mean(res[m]["psnr"])), "ssim": float(np.mean(res[m]["ssim"])),
                             "finetunes": res[m]["finetunes"], "train_s": res[m]["train_s"],
                             "lookup_ms_p50": float(np.median(lookup_ms)) if m == "river" else None,
                             "prefetch_hit_top3": prefetch.hit_rate if m == "river" else None}
    return out


def markdown(data: dict) -> str:
    lines = [f"Command: `{data['meta']['command']}`", "",
             "| method | PSNR-Y (dB) | SSIM-Y | fine-tunes | training s | lookup+vote ms/frame p50 | "
             "prefetch top-3 hit |",
             "|---|---|---|---|---|---|---|"]
    for m, r in data["methods"].items():
        lk = f"{r['lookup_ms_p50']:.2f}" if r["lookup_ms_p50"] is not None else "-"
        pf = f"{r['prefetch_hit_top3']:.2f}" if r["prefetch_hit_top3"] is not None else "-"
        lines.append(f"| {m} | {r['psnr_db']:.3f} | {r['ssim']:.4f} | {r['finetunes']} | {r['train_s']:.1f} | {lk} | "
                     f"{pf} |")
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    for m in METHODS:
        a.plot(data["per_segment_psnr"][m], marker=".", label=m)
        b.plot(data["cum_train_s"][m], label=m)
    a.set(xlabel="segment (stream order)", ylabel="PSNR-Y (dB)", title="quality per segment")
    b.set(xlabel="segment (stream order)", ylabel="training seconds so far", title="training cost")
    a.legend()
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = run(args)
    data["meta"] = {"command": command_line("bench.river", argv),
                    "gameplay": asdict(args.eval_cfg), "finetune_steps": args.steps,
                    "generic_steps": args.generic_steps, "eval_every": args.eval_every}
    print(write_results(args.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
