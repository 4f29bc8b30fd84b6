"""Where do content-specific SR models pay off? The per-segment fine-tune's gain over the generic models.

    python -m bench.river_headroom --wad freedoom2 --maps MAP01,MAP02,MAP03 --segments 6 \\
        --out bench/results/river_headroom.json

For each setting (scale factor, model size, stream CRF, learning-rate schedule, patch selection), on the same
game segments: the generic models (`generic_game`: trained on other maps of the game; `generic_other`: trained on
natural photographs, `runtime.river.natural`), then every segment's own fine-tune from `generic_game`, evaluated
every `--every` steps. One constant-rate run gives the gain of every shorter budget; the cosine setting is one run
per budget in `--cosine-budgets`. Also measured per setting: training seconds per step and the client's cost,
milliseconds to upscale one frame to 1280x720 with torch on this CPU. PSNR-Y with a `scale`-pixel border crop over
every `--eval-every`-th frame. Every scale x model is measured; the other factors vary one at a time around a base
(`--base-scale`, `--base`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.output import command_line, save_figure, write_results
from bench.river import game_model, gameplay_arguments, gameplay_configs, generic_config, generic_other
from runtime.river.dataset import build_dataset, load_pairs
from runtime.river.degrade import check_scale
from runtime.river.gameplay import HEIGHT, WIDTH
from runtime.river.sr import EDSR, SRConfig, psnr_y, upscale
from runtime.river.train import TrainConfig, model_from_state, train


@dataclass(frozen=True)
class Setting:
    scale: int
    blocks: int
    channels: int
    crf: int = 28
    schedule: str = "constant"
    selection: str = "edge"  # training patches: edge-rich ones, or "uniform" over the frame

    @property
    def name(self) -> str:
        parts = [f"x{self.scale}", f"{self.blocks}x{self.channels}", f"crf{self.crf}"]
        parts += [self.schedule] if self.schedule != "constant" else []
        parts += [self.selection] if self.selection != "edge" else []
        return " ".join(parts)

    @property
    def sr(self) -> SRConfig:
        return SRConfig(blocks=self.blocks, channels=self.channels, scale=self.scale)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.river_headroom", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    gameplay_arguments(p, "MAP01,MAP02,MAP03", 6)
    p.add_argument("--scales", default="2,4")
    p.add_argument("--models", default="4x16,8x32", help="blocks x channels, at the base scale")
    p.add_argument("--base", default="4x16", help="the model the other factors vary around")
    p.add_argument("--base-scale", type=int, default=2, help="the scale the other factors vary around")
    p.add_argument("--other-scale-models", default="", help="models at the other scales besides the base model")
    p.add_argument("--crfs", default="23,28,35", help="the stream's CRF (28 is the base)")
    p.add_argument("--steps", type=int, default=900, help="the longest fine-tune budget")
    p.add_argument("--every", type=int, default=150, help="evaluate every n steps")
    p.add_argument("--cosine-budgets", default="300,900")
    p.add_argument("--generic-steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=3, help="evaluate every n-th frame")
    p.add_argument("--quick", action="store_true", help="one scale, one model, 2 tiny segments (CI)")
    p.add_argument("--cache", default="build/river")
    p.add_argument("--out", default="river_headroom.json")
    args = p.parse_args(argv)
    if args.quick:
        args.scales, args.models, args.base, args.base_scale, args.crfs = "4", "2x8", "2x8", 4, "28"
        args.segments, args.segment_s, args.steps, args.every, args.generic_steps = 2, 0.5, 20, 10, 20
        args.cosine_budgets = "20"
    try:
        args.scale_list = [int(s) for s in args.scales.split(",") if s]
        args.model_list = [tuple(int(v) for v in m.split("x")) for m in args.models.split(",") if m]
        args.other_models = [tuple(int(v) for v in m.split("x")) for m in args.other_scale_models.split(",") if m]
        args.base_model = tuple(int(v) for v in args.base.split("x"))
        args.crf_list = [int(c) for c in args.crfs.split(",") if c]
        args.cosine_list = [int(b) for b in args.cosine_budgets.split(",") if b]
    except ValueError:
        p.error("--scales, --crfs and --cosine-budgets take integers, --models and --base blocks x channels")
    if args.segments < 1 or args.steps < 1 or args.every < 1 or args.eval_every < 1:
        p.error("--segments, --steps, --every and --eval-every must be >= 1")
    gameplay_configs(p, args)
    try:
        args.settings = settings(args)
    except ValueError as e:
        p.error(str(e))
    return args


def settings(args) -> list[Setting]:
    """At the base scale every model; around the base (scale, model): the other CRFs, the cosine schedule and
    uniform patch selection; at the other scales the base model and `--other-scale-models`."""
    base = Setting(args.base_scale, *args.base_model)
    out = [Setting(args.base_scale, b, c) for b, c in args.model_list]
    out += [replace(base, crf=c) for c in args.crf_list if c != base.crf]
    out += [replace(base, schedule="cosine"), replace(base, selection="uniform")]
    others = [s for s in args.scale_list if s != args.base_scale]
    out += [Setting(s, b, c) for s in others for b, c in [args.base_model, *args.other_models]]
    for st in out:
        st.sr  # noqa: B018 - validates the model configuration before anything runs
        check_scale(WIDTH, HEIGHT, st.scale)
    return list(dict.fromkeys(out))


@torch.inference_mode()
def client_ms(sr: SRConfig, reps: int = 3) -> float:
    """Milliseconds to upscale one frame to 1280x720 (torch, float32, this CPU's threads)."""
    model = EDSR(sr).eval()
    x = torch.rand(1, 3, 720 // sr.scale, 1280 // sr.scale)
    model(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        model(x)
    return (time.perf_counter() - t0) / reps * 1e3


def run_setting(st: Setting, args) -> dict:
    """One setting's measurements, cached under the cache directory by everything that changes them (a rerun
    with a larger grid measures only what is new)."""
    recipe = {"setting": asdict(st), "gameplay": asdict(args.eval_cfg), "train": asdict(args.train_cfg),
              "segments": args.segments, "steps": args.steps, "every": args.every, "cosine": args.cosine_list,
              "generic_steps": args.generic_steps, "eval_every": args.eval_every, "version": 1}
    path = Path(args.cache) / "headroom" / (hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
                                             .hexdigest()[:16] + ".json")
    if path.exists():
        return json.loads(path.read_text())
    result = json.loads(json.dumps(_measure(st, args)))  # budgets as JSON keys, as a cached copy has them
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def _measure(st: Setting, args) -> dict:
    cache = Path(args.cache)
    pairs = load_pairs(build_dataset(args.eval_cfg, scale=st.scale, crf=st.crf, root=cache / "datasets",
                                     progress=False))[: args.segments]
    game, _ = game_model(args.train_cfg, st.sr, st.crf, args.generic_steps, cache)
    other = generic_other(st.sr, st.crf, generic_config(args.generic_steps), cache / "models")
    game_net, other_net = model_from_state(game.state, st.sr), model_from_state(other.state, st.sr)
    threshold = 0.0 if st.selection == "uniform" else TrainConfig().edge_threshold
    rows = []
    for pair in tqdm(pairs, desc=st.name, unit="segment", file=sys.stderr):
        lo, hi = pair.lr[:: args.eval_every], pair.hr[:: args.eval_every]

        def quality(model, lo=lo, hi=hi) -> float:
            return psnr_y(upscale(model, lo, st.scale), hi, st.scale)

        row = {"segment": pair.segment_id, "bicubic": quality(None), "generic_game": quality(game_net),
               "generic_other": quality(other_net), "budgets": {}, "seconds": {}}
        if st.schedule == "constant":
            cfg = TrainConfig(steps=args.steps, edge_threshold=threshold)
            curve = {}
            res = train(model_from_state(game.state, st.sr), [(pair.lr, pair.hr)], cfg,
                        checkpoints=lambda step, m, curve=curve: curve.__setitem__(step, quality(m)),
                        every=args.every)
            row["budgets"] = curve
            row["seconds"] = {b: res.seconds * b / args.steps for b in curve}
        else:
            for budget in args.cosine_list:
                cfg = TrainConfig(steps=budget, edge_threshold=threshold, schedule=st.schedule)
                res = train(model_from_state(game.state, st.sr), [(pair.lr, pair.hr)], cfg)
                row["budgets"][budget] = quality(model_from_state(res.state, st.sr))
                row["seconds"][budget] = res.seconds
        rows.append(row)
    budgets = sorted(rows[0]["budgets"])
    summary = {}
    for b in budgets:
        tuned = np.array([r["budgets"][b] for r in rows])
        summary[b] = {
            "psnr_db": float(tuned.mean()),
            "gain_vs_game_db": float(np.mean(tuned - [r["generic_game"] for r in rows])),
            "gain_vs_game_std": float(np.std(tuned - [r["generic_game"] for r in rows])),
            "gain_vs_other_db": float(np.mean(tuned - [r["generic_other"] for r in rows])),
            "gain_vs_bicubic_db": float(np.mean(tuned - [r["bicubic"] for r in rows])),
            "train_s": float(np.mean([r["seconds"][b] for r in rows]))}
    return {"setting": asdict(st), "name": st.name,
            "params": sum(v.numel() for v in game.state.values()),
            "client_ms_per_frame": client_ms(st.sr),
            "bicubic_db": float(np.mean([r["bicubic"] for r in rows])),
            "generic_game_db": float(np.mean([r["generic_game"] for r in rows])),
            "generic_other_db": float(np.mean([r["generic_other"] for r in rows])),
            "generic_train_s": {"game": game.seconds, "other": other.seconds},
            "budgets": summary, "segments": rows}


def markdown(data: dict) -> str:
    lines = [f"Command: `{data['meta']['command']}`", "",
             f"{data['meta']['segments']} segments of {', '.join(data['meta']['maps'])} ({data['meta']['wad']}); "
             f"PSNR-Y in dB. `ft` = the segment's own fine-tune from `generic_game` at the largest budget; gains "
             f"are ft minus each baseline, mean +- std over segments. Client: ms to upscale one frame to 1280x720 "
             f"(torch, this CPU).", "",
             "| setting | params | client ms | bicubic | generic_other | generic_game | budget | ft | "
             "ft - generic_game | ft - generic_other | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["settings"]:
        b = max(r["budgets"], key=int)
        s = r["budgets"][b]
        lines.append(f"| {r['name']} | {r['params']:,} | {r['client_ms_per_frame']:.0f} | {r['bicubic_db']:.2f} | "
                     f"{r['generic_other_db']:.2f} | {r['generic_game_db']:.2f} | {b} | {s['psnr_db']:.2f} | "
                     f"{s['gain_vs_game_db']:+.2f} +- {s['gain_vs_game_std']:.2f} | {s['gain_vs_other_db']:+.2f} | "
                     f"{s['train_s']:.1f} |")
    lines += ["", "Gain over generic_game by budget (steps):", ""]
    for r in data["settings"]:
        lines.append(f"- {r['name']}: " + ", ".join(f"{b}: {s['gain_vs_game_db']:+.2f} dB ({s['train_s']:.0f} s)"
                                                    for b, s in sorted(r["budgets"].items(), key=lambda x: int(x[0]))))
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in data["settings"]:
        items = sorted(r["budgets"].items(), key=lambda x: int(x[0]))
        a.plot([s["train_s"] for _, s in items], [s["gain_vs_game_db"] for _, s in items], marker=".",
               label=r["name"])
        last = items[-1][1]
        b.scatter(r["client_ms_per_frame"], last["gain_vs_other_db"], marker="o")
        b.annotate(r["name"], (r["client_ms_per_frame"], last["gain_vs_other_db"]), fontsize=7)
    a.axhline(0, color="grey", lw=0.5)
    a.set(xlabel="fine-tune seconds per segment", ylabel="gain over generic_game (dB)",
          title="per-segment fine-tune: gain vs budget")
    b.axvline(50, color="red", lw=0.5, ls="--")
    b.set(xlabel="client ms per 720p frame (torch, this CPU; 50 ms = 20 fps)",
          ylabel="fine-tune gain over generic_other (dB)", title="quality vs client cost")
    a.legend(fontsize=7)
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = [run_setting(st, args) for st in args.settings]
    data = {"settings": results,
            "meta": {"command": command_line("bench.river_headroom", argv), "wad": args.wad,
                     "maps": list(args.eval_cfg.maps), "segments": args.segments, "steps": args.steps,
                     "every": args.every, "generic_steps": args.generic_steps, "eval_every": args.eval_every,
                     "gameplay": asdict(args.eval_cfg)}}
    print(write_results(args.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
