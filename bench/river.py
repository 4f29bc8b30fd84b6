"""River against the baselines of neural-enhanced streaming, on the same game segments, over several seeds.

    python -m bench.river --wad freedoom2 --maps MAP01,MAP02,MAP03 --segments 24 --seeds 0,1,2 \\
        --out bench/results/river.json

Methods (all with the same SR model shape and scale factor, PSNR-Y and SSIM-Y with a `scale`-pixel border crop,
over every `--eval-every`-th frame of each segment):
- `bicubic`;
- `generic_other`: one model trained on natural photographs (`runtime.river.natural`: scikit-image's bundled
  images), the "generic pretrained SR" of the neural-streaming papers;
- `generic_game`: one model trained on other maps of the same game, a model a game studio could ship;
- `per_video` (NAS): one fine-tune of `generic_game` on the whole session, offline (it has seen the future);
- `online` (LiveNAS): one model fine-tuned continuously on the live stream, an update on the newest segments at a
  time, each usable only once its measured training time has passed in stream time;
- `per_segment`: each segment's own fine-tune applied to itself with no delay (the upper bound);
- `river_first`: lookup + vote + quality gate + fine-tune on a miss + reuse (`runtime.river.online`), as the
  first session a service ever streams: its store starts empty;
- `river`: the same on the store that `--earlier` other playthroughs of the same maps left behind (streamed
  through River before, their fine-tunes finished): a service's steady state, and the paper's setting, whose
  lookup table is built offline from the game's video. The training those sessions did is reported apart; the
  model transitions the service's prefetcher learned from them stay learned, as they would in the service.
River, River's earlier sessions and `online` each train on one trainer (one at a time, in stream time: segment i
arrives at i x segment length).
Every seed records another playthrough of the maps and trains with another seed; the generic models are shared.
Writes the JSON, a Markdown table (every figure as mean +- std over seeds, and the targets) and plots.

A seed's finished run is kept under `--cache`/runs, named by every setting and the source of River and of this
benchmark, and a later command with the same settings reuses it instead of running it again (`--fresh`: never):
one seed of the committed configuration takes about an hour on 2 cores, so the seeds can be run one at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from concurrent.futures import Future
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.output import command_line, save_figure, write_results
from runtime.river.dataset import Pair, build_dataset, load_pairs
from runtime.river.degrade import check_scale
from runtime.river.gameplay import HEIGHT, WIDTH, GameplayConfig
from runtime.river.natural import IMAGES, natural_pairs
from runtime.river.online import GateConfig, OnlineRiver
from runtime.river.prefetch import PrefetchTracker, TransitionModel
from runtime.river.sessions import RiverSessions
from runtime.river.sr import SRConfig, psnr_y, ssim_y, upscale
from runtime.river.store import ModelStore
from runtime.river.train import TrainConfig, TrainResult, finetune, generic_model, generic_path, model_from_state

METHODS = ("bicubic", "generic_other", "generic_game", "per_video", "online", "per_segment", "river_first", "river")
# the playthrough seeds of River's earlier sessions: EARLIER_SEED * k + seed for the k-th (k >= 1), never an
# evaluated seed's recording
EARLIER_SEED = 1000
TRAIN_MAPS = {"freedoom2": "MAP10,MAP11", "freedoom1": "E3M1,E3M2"}
# (method, baseline, margin dB): river must reach baseline + margin (issue 14's targets)
TARGETS = (("generic_other", 1.81), ("generic_game", 1.0), ("online", 0.5), ("per_segment", -0.3))


def generic_config(steps: int) -> TrainConfig:
    """How every generic model (game or photographs) trains: `steps` steps, cosine schedule."""
    return TrainConfig(steps=steps, schedule="cosine")


def generic_game(train_index: Path, sr: SRConfig, cfg: TrainConfig, cache: Path) -> TrainResult:
    """One model for the whole game, trained on other maps' segments (cached)."""
    return generic_model(lambda: [(p.lr, p.hr) for p in load_pairs(train_index)], game_key(train_index), sr, cfg,
                         cache, progress=False)


def game_model(train_cfg: GameplayConfig, sr: SRConfig, crf: int, steps: int, cache: Path
               ) -> tuple[TrainResult, Path]:
    """The game's generic model as every River benchmark builds it: `train_cfg`'s gameplay streamed at `crf`, then
    `generic_config(steps)`; dataset and model cached under `cache`. Returns the model and its file."""
    index = build_dataset(train_cfg, scale=sr.scale, crf=crf, root=cache / "datasets", progress=False)
    cfg = generic_config(steps)
    return generic_game(index, sr, cfg, cache / "models"), generic_path(game_key(index), sr, cfg, cache / "models")


def game_key(train_index: Path) -> dict:
    """What `generic_game` caches its model by (`runtime.river.train.generic_path` finds the file with it)."""
    return {"index": f"{train_index.parent.name}/{train_index.name}"}


def train_gameplay(wad: str, train_maps: list[str], segment_s: float, fps: float) -> GameplayConfig:
    """The gameplay the generic game model trains on: two segments of each of the game's training maps."""
    return GameplayConfig(wad, tuple(train_maps), 2, segment_s, fps, seed=100)


def generic_other(sr: SRConfig, crf: int, cfg: TrainConfig, cache: Path) -> TrainResult:
    """One model trained on natural photographs, degraded like the stream (cached)."""
    return generic_model(lambda: natural_pairs(sr.scale, crf), {"natural": list(IMAGES), "crf": crf}, sr, cfg,
                         cache, progress=False)


def gameplay_arguments(p: argparse.ArgumentParser, maps: str, segments: int) -> None:
    """The arguments River's benchmarks share: which gameplay is evaluated and which trains the generic model
    (`gameplay_configs` turns them into configurations)."""
    p.add_argument("--wad", default="freedoom2")
    p.add_argument("--maps", default=maps, help="evaluated maps, played in this order")
    p.add_argument("--train-maps", default=None, help="maps the generic model is trained on (never evaluated)")
    p.add_argument("--segments", type=int, default=segments, help="evaluated segments, split evenly over the maps")
    p.add_argument("--segment-s", type=float, default=2.0)
    p.add_argument("--fps", type=float, default=8.75)


def gameplay_configs(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`args.eval_cfg` (the evaluated maps, `--segments` split evenly over them) and `args.train_cfg` (the
    generic game model's maps, never evaluated), from the arguments River's benchmarks share; errors via `p`."""
    maps = [m for m in args.maps.split(",") if m]
    train_maps = [m for m in (args.train_maps or TRAIN_MAPS.get(args.wad, "")).split(",") if m]
    overlap = set(maps) & set(train_maps)
    if overlap:
        p.error(f"--train-maps must not include evaluated maps, both have {sorted(overlap)}")
    if args.segments < 1 or not maps:
        p.error("--segments must be >= 1 and --maps must name a map")
    try:
        args.eval_cfg = GameplayConfig(args.wad, tuple(maps), math.ceil(args.segments / len(maps)), args.segment_s,
                                       args.fps, seed=0)
        args.train_cfg = train_gameplay(args.wad, train_maps, args.segment_s, args.fps)
    except ValueError as e:
        p.error(str(e))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    sr, ft = SRConfig(), TrainConfig()
    p = argparse.ArgumentParser(prog="python -m bench.river", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    gameplay_arguments(p, "MAP01,MAP02,MAP03", 24)
    p.add_argument("--seeds", default="0,1,2", help="playthroughs (and training seeds); --segments is per seed")
    p.add_argument("--crf", type=int, default=28)
    p.add_argument("--scale", type=int, default=sr.scale)
    p.add_argument("--model", default=f"{sr.blocks}x{sr.channels}", help="blocks x channels")
    p.add_argument("--steps", type=int, default=ft.steps, help="steps of one fine-tune (river, per_segment, online)")
    p.add_argument("--video-steps", type=int, default=None, help="per_video's budget (default: 8 x --steps)")
    p.add_argument("--generic-steps", type=int, default=3000)
    p.add_argument("--online-window", type=int, default=2, help="segments an online update trains on")
    p.add_argument("--earlier", type=int, default=1,
                   help="other playthroughs of the maps streamed through River before `river`'s session (>= 1)")
    p.add_argument("--eval-every", type=int, default=3, help="evaluate every n-th frame")
    p.add_argument("--quick", action="store_true", help="4 short segments, one seed, tiny budgets (CI)")
    p.add_argument("--cache", default="build/river")
    p.add_argument("--fresh", action="store_true", help="run every seed, even one finished before with these settings")
    p.add_argument("--out", default="river.json")
    args = p.parse_args(argv)
    if args.quick:
        args.segments, args.segment_s, args.steps, args.generic_steps, args.seeds = 4, 1.0, 30, 30, "0"
        args.model = "2x8"
    args.video_steps = args.video_steps or 8 * args.steps
    gameplay_configs(p, args)
    for name in ("eval_every", "steps", "online_window", "earlier"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s]
        blocks, channels = (int(v) for v in args.model.split("x"))
    except ValueError:
        p.error("--seeds takes comma-separated integers and --model blocks x channels (e.g. 4x16)")
    if not args.seed_list:
        p.error("--seeds must name at least one seed")
    try:
        args.sr = SRConfig(blocks=blocks, channels=channels, scale=args.scale)
        check_scale(WIDTH, HEIGHT, args.scale)
        args.finetune = TrainConfig(steps=args.steps)
        args.gate = GateConfig()
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
    """One trainer in stream time: it trains at once (this process) but a fine-tune is done only once the stream
    clock passes its start (its submission, or the end of the one before it) plus its measured seconds."""

    def __init__(self):
        self.now = 0.0
        self.free_at = 0.0
        self.total_s = 0.0
        self.count = 0

    def submit(self, base, sr, pairs, cfg) -> Future:
        result = finetune(base, sr, pairs, cfg)
        self.total_s += result.seconds
        self.count += 1
        self.free_at = max(self.now, self.free_at) + result.seconds
        return _ReadyAt(result, self, self.free_at)


class LiveTraining:
    """LiveNAS-style online learning: one model, fine-tuned continuously on the live stream. Each update continues
    from the newest weights on the `window` newest segments that had arrived when it started; its weights are
    served once it ends (start + its measured seconds). The next update starts then, or when a segment it has not
    trained on arrives."""

    def __init__(self, base: TrainResult, cfg: TrainConfig, window: int):
        self.weights, self.sr, self.cfg, self.window = base.state, base.sr, cfg, window
        self.served = model_from_state(base.state, base.sr)
        self.pending = None  # (ready time, model) of the update in progress
        self.arrived: list[tuple[float, Pair]] = []
        self.free_at = 0.0
        self.trained = 0  # segments of `arrived` some update has trained on
        self.total_s = 0.0
        self.updates = 0

    def model_at(self, now: float, pair: Pair):
        """The model a segment arriving at `now` is played with; the segment then joins the training data."""
        self._advance(now)
        served = self.served
        self.arrived.append((now, pair))
        self._advance(now)  # an idle trainer starts on it at once
        return served

    def _advance(self, now: float) -> None:
        while True:
            if self.pending is not None and self.pending[0] <= now:
                self.served, self.pending = self.pending[1], None
            if self.pending is not None or self.trained == len(self.arrived):
                return
            start = max(self.free_at, self.arrived[self.trained][0])
            if start > now:
                return
            seen = [p for t, p in self.arrived if t <= start]
            self.trained = len(seen)
            recent = seen[-self.window:]
            res = finetune(self.weights, self.sr, [(p.lr, p.hr) for p in recent],
                           replace(self.cfg, seed=self.cfg.seed + self.updates))
            self.weights, self.updates, self.total_s = res.state, self.updates + 1, self.total_s + res.seconds
            self.free_at = start + res.seconds
            self.pending = (self.free_at, model_from_state(res.state, self.sr))


def score(model, pair: Pair, every: int) -> tuple[float, float]:
    lo, hi = pair.lr[::every], pair.hr[::every]
    sr = upscale(model, lo, pair.scale)
    return psnr_y(sr, hi, pair.scale), ssim_y(sr, hi, pair.scale)


def eval_pairs(args, seed: int) -> list[Pair]:
    """The evaluated maps played with `seed`: `--segments` segments in stream order."""
    cfg = replace(args.eval_cfg, seed=seed)
    return load_pairs(build_dataset(cfg, scale=args.sr.scale, crf=args.crf, root=Path(args.cache) / "datasets",
                                    progress=False))[: args.segments]


def earlier_sessions(args, seed: int, game: TrainResult, store_dir: str) -> tuple[dict, TransitionModel]:
    """Streams `--earlier` other playthroughs of the evaluated maps through River into the store at `store_dir`,
    each fine-tune finished before the next segment: the store a service holds after earlier players of these
    maps, and the model transitions its prefetcher learned from them. Returns what they trained and stored, and
    those transitions."""
    session = RiverSession(args, seed, game, store_dir)
    for k in range(1, args.earlier + 1):
        for pair in tqdm(eval_pairs(args, EARLIER_SEED * k + seed), desc=f"seed {seed}: earlier session {k}",
                         unit="segment", file=sys.stderr):
            session.play(f"earlier {k}", pair)
            session.collect(wait=True)
    trained = {"finetunes": session.trainer.count, "train_s": session.trainer.total_s,
               "models": len(session.river.store), "transitions_learned": session.prefetch.lookups}
    return trained, session.prefetch.model


class RiverSession:
    """Sessions streamed through River in stream time, on its own trainer and a store at `store_dir`, with the
    service's prefetcher (`ModelStoreActor`'s calls): each segment's model is recorded with its content, each new
    model offered to the sessions whose content it matches. `transitions`: what the service learned before."""

    def __init__(self, args, seed: int, game: TrainResult, store_dir: str,
                 transitions: TransitionModel | None = None):
        self.trainer = StreamClockTrainer()
        self.river = OnlineRiver(ModelStore(store_dir), game, self.trainer, gate=args.gate,
                                 finetune=replace(args.finetune, seed=seed))
        self.wad = args.wad
        self.decisions: list[dict] = []
        self.lookup_ms: list[float] = []
        self.prefetch = PrefetchTracker(k=3, model=transitions or TransitionModel())
        self.sessions = RiverSessions(self.river, self.prefetch)

    def collect(self, wait: bool = False) -> None:
        self.sessions.collect(wait)

    def play(self, session: str, pair: Pair):
        """Choose the model for the segment and record it; returns the decision."""
        return self.sessions.process(session, self.wad, pair.segment_id, pair.lr, pair.hr)

    def model_at(self, now: float, pair: Pair):
        """The model the evaluated session's segment arriving at `now` is played with."""
        self.trainer.now = now
        self.collect()
        d = self.play("evaluated", pair)
        self.decisions.append({"segment": pair.segment_id, "model": d.model_id, "voted": d.voted_id,
                               "vote_share": d.vote_share, "gain_db": d.gain_db, "finetune": d.finetune_scheduled,
                               "contenders": list(d.contenders)})
        self.lookup_ms.append(d.lookup_ms / len(pair.lr))
        return self.river.model(d.model_id)


def run_seed(args, seed: int, game: TrainResult, other: TrainResult) -> dict:
    """Every method on one playthrough; per method: PSNR/SSIM per segment, training seconds, fine-tunes."""
    sr = args.sr
    pairs = eval_pairs(args, seed)
    ft = replace(args.finetune, seed=seed)
    res = {m: {"psnr": [], "ssim": [], "train_s": 0.0, "finetunes": 0, "cum_train_s": []} for m in METHODS}

    def record(method, model, pair):
        p, s = score(model, pair, args.eval_every)
        res[method]["psnr"].append(p)
        res[method]["ssim"].append(s)
        res[method]["cum_train_s"].append(res[method]["train_s"])

    game_net, other_net = model_from_state(game.state, sr), model_from_state(other.state, sr)
    video = finetune(game.state, sr, [(p.lr, p.hr) for p in pairs], replace(ft, steps=args.video_steps))
    res["per_video"].update(train_s=video.seconds, finetunes=1)
    video_net = model_from_state(video.state, sr)
    live = LiveTraining(game, ft, args.online_window)
    with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as warm:
        earlier, transitions = earlier_sessions(args, seed, game, warm)
        rivers = {"river_first": RiverSession(args, seed, game, empty),
                  "river": RiverSession(args, seed, game, warm, transitions)}
        for i, pair in enumerate(tqdm(pairs, desc=f"seed {seed}", unit="segment", file=sys.stderr)):
            now = i * args.segment_s
            record("bicubic", None, pair)
            record("generic_other", other_net, pair)
            record("generic_game", game_net, pair)
            record("per_video", video_net, pair)
            record("online", live.model_at(now, pair), pair)
            res["online"].update(train_s=live.total_s, finetunes=live.updates)
            own = finetune(game.state, sr, [(pair.lr, pair.hr)], ft)
            res["per_segment"]["train_s"] += own.seconds
            res["per_segment"]["finetunes"] += 1
            record("per_segment", model_from_state(own.state, sr), pair)
            for name, session in rivers.items():
                model = session.model_at(now, pair)
                res[name].update(train_s=session.trainer.total_s, finetunes=session.trainer.count)
                record(name, model, pair)
        stored = {name: len(session.river.store) for name, session in rivers.items()}
    first, river = rivers["river_first"], rivers["river"]
    return {"seed": seed, "segments": [p.segment_id for p in pairs], "methods": res,
            "river_decisions": river.decisions, "river_first_decisions": first.decisions, "earlier": earlier,
            "river_store_models": stored["river"], "river_first_store_models": stored["river_first"],
            "lookup_ms_p50": float(np.median(river.lookup_ms)), "prefetch_hit_top3": river.prefetch.hit_rate,
            "river_model_switches": int(np.count_nonzero(np.diff([d["model"] for d in river.decisions]))),
            "river_first_prefetch_hit_top3": first.prefetch.hit_rate}


def _spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std()), "values": v.tolist()}


def summarize(runs: list[dict]) -> dict:
    """Per method mean +- std over seeds of the seed means; river's margins over each baseline, seed by seed."""
    methods = {}
    for m in METHODS:
        methods[m] = {"psnr_db": _spread([np.mean(r["methods"][m]["psnr"]) for r in runs]),
                      "ssim": _spread([np.mean(r["methods"][m]["ssim"]) for r in runs]),
                      "train_s": _spread([r["methods"][m]["train_s"] for r in runs]),
                      "finetunes": _spread([r["methods"][m]["finetunes"] for r in runs])}
    river = [np.mean(r["methods"]["river"]["psnr"]) for r in runs]
    targets = []
    for base, margin in TARGETS:
        diff = _spread(np.subtract(river, [np.mean(r["methods"][base]["psnr"]) for r in runs]))
        # met: the margin holds beyond the seeds' spread (a win inside the spread is not a win)
        targets.append({"baseline": base, "margin_db": margin, "river_minus_baseline_db": diff,
                        "met": diff["mean"] - diff["std"] >= margin})
    ratio = _spread([r["methods"]["river"]["train_s"] / max(r["methods"]["per_segment"]["train_s"], 1e-9)
                     for r in runs])
    hit = _spread([r["prefetch_hit_top3"] for r in runs])
    targets.append({"baseline": "per_segment training s", "max_ratio": 0.5, "ratio": ratio,
                    "met": ratio["mean"] + ratio["std"] <= 0.5})
    targets.append({"baseline": "prefetch top-3 hit", "min": 0.8, "hit": hit, "met": hit["mean"] - hit["std"] >= 0.8})
    first = [np.mean(r["methods"]["river_first"]["psnr"]) for r in runs]
    first_margins = {base: _spread(np.subtract(first, [np.mean(r["methods"][base]["psnr"]) for r in runs]))
                     for base, _ in TARGETS}
    earlier = {k: _spread([r["earlier"][k] for r in runs]) for k in ("finetunes", "train_s", "models")}
    return {"methods": methods, "targets": targets, "river_first_margins_db": first_margins, "earlier": earlier,
            "lookup_ms_p50": _spread([r["lookup_ms_p50"] for r in runs]),
            "river_model_switches": _spread([r["river_model_switches"] for r in runs])}


def run(args) -> dict:
    cache, sr = Path(args.cache), args.sr
    game, _ = game_model(args.train_cfg, sr, args.crf, args.generic_steps, cache)
    other = generic_other(sr, args.crf, generic_config(args.generic_steps), cache / "models")
    runs = [kept_run(args, seed, game, other) for seed in args.seed_list]
    return {**summarize(runs), "runs": runs, "generic_train_s": {"game": game.seconds, "other": other.seconds}}


def run_file(args, seed: int) -> Path:
    """Where `seed`'s finished run is kept: named by every setting that shapes it and by the source code that
    produced it, so that a run is reused only by the same benchmark of the same River."""
    settings = {"eval": {**asdict(args.eval_cfg), "seed": seed}, "train": asdict(args.train_cfg), "crf": args.crf,
                "sr": args.sr.to_dict(), "finetune": asdict(args.finetune), "video_steps": args.video_steps,
                "generic_steps": args.generic_steps, "online_window": args.online_window, "earlier": args.earlier,
                "eval_every": args.eval_every, "gate": asdict(args.gate)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    root = Path(__file__).resolve().parents[1]
    for source in sorted((root / "runtime" / "river").glob("*.py")) + [Path(__file__).resolve()]:
        digest.update(source.read_bytes())
    return Path(args.cache) / "runs" / f"river-{digest.hexdigest()[:16]}-seed{seed}.json"


def kept_run(args, seed: int, game: TrainResult, other: TrainResult) -> dict:
    """`run_seed`, or the run a command with the same settings and code finished before (unless --fresh)."""
    path = run_file(args, seed)
    if path.exists() and not args.fresh:
        kept = json.loads(path.read_text())
        print(f"seed {seed}: reusing the run finished at {kept['finished_at']} ({path})", file=sys.stderr)
        return kept
    result = {**run_seed(args, seed, game, other), "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, default=str))
    return result


def _pm(s: dict, fmt: str = ".2f") -> str:
    return f"{s['mean']:{fmt}} +- {s['std']:{fmt}}"


def target_verdicts(data: dict) -> list[tuple[bool, str]]:
    """(met, what was measured against what) for each target, as the table and bench.targets print them."""
    out = []
    for t in data["targets"]:
        if "margin_db" in t:
            out.append((t["met"], f"river >= {t['baseline']} {t['margin_db']:+.2f} dB: measured "
                                  f"{_pm(t['river_minus_baseline_db'])} dB"))
        elif "max_ratio" in t:
            out.append((t["met"], f"river training s <= {t['max_ratio']} x per_segment: measured {_pm(t['ratio'])}"))
        else:
            out.append((t["met"], f"prefetch top-3 hit >= {t['min']}: measured {_pm(t['hit'])}"))
    return out


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [f"Command: `{meta['command']}`", "",
             f"SR model {meta['sr']}, fine-tunes of {meta['finetune_steps']} steps; {len(data['runs'])} seeds "
             f"x {len(data['runs'][0]['segments'])} segments; every figure is mean +- std over seeds.", "",
             "| method | PSNR-Y (dB) | SSIM-Y | fine-tunes | training s |", "|---|---|---|---|---|"]
    for m, r in data["methods"].items():
        lines.append(f"| {m} | {_pm(r['psnr_db'], '.3f')} | {_pm(r['ssim'], '.4f')} | {_pm(r['finetunes'], '.1f')} "
                     f"| {_pm(r['train_s'], '.1f')} |")
    e = data["earlier"]
    lines += ["", f"River's lookup + vote: {_pm(data['lookup_ms_p50'])} ms per frame (p50); `river`'s player "
              f"switched models {_pm(data['river_model_switches'], '.1f')} times in "
              f"{len(data['runs'][0]['segments']) - 1} segment boundaries.", "",
              f"`river` starts from the store that {meta['earlier']} earlier session(s) of the same maps left "
              f"(other playthroughs): they fine-tuned {_pm(e['finetunes'], '.1f')} times in "
              f"{_pm(e['train_s'], '.0f')} s and stored {_pm(e['models'], '.1f')} models; that training is not "
              "in `river`'s training seconds. `river_first` starts from an empty store.", "",
              "| target (met only beyond the seeds' spread) | met |", "|---|---|"]
    lines += [f"| {text} | {'yes' if met else 'no'} |" for met, text in target_verdicts(data)]
    lines += ["", "| river_first (empty store) minus | dB |", "|---|---|"]
    lines += [f"| {base} | {_pm(d)} |" for base, d in data["river_first_margins_db"].items()]
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.2))
    means = [data["methods"][m]["psnr_db"]["mean"] for m in METHODS]
    stds = [data["methods"][m]["psnr_db"]["std"] for m in METHODS]
    a.bar(METHODS, means, yerr=stds, capsize=3, color=["#999"] * 3 + ["#69c"] * 3 + ["#e96", "#d62"])
    a.set_ylim(min(means) - 0.5, max(means) + 0.5)
    a.set(ylabel="PSNR-Y (dB), mean over seeds", title="quality")
    a.tick_params(axis="x", rotation=30)
    first = data["runs"][0]["methods"]
    for m in METHODS:
        b.plot(first[m]["psnr"], marker=".", label=m)
        c.plot(first[m]["cum_train_s"], label=m)
    b.set(xlabel="segment (stream order)", ylabel="PSNR-Y (dB)", title=f"per segment, seed {data['runs'][0]['seed']}")
    c.set(xlabel="segment (stream order)", ylabel="training seconds so far", title="training cost")
    b.legend(fontsize=7)
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = run(args)
    data["meta"] = {"command": command_line("bench.river", argv), "gameplay": asdict(args.eval_cfg),
                    "seeds": args.seed_list, "sr": args.sr.to_dict(), "finetune_steps": args.steps,
                    "video_steps": args.video_steps, "generic_steps": args.generic_steps, "earlier": args.earlier,
                    "gate": asdict(args.gate), "eval_every": args.eval_every, "crf": args.crf}
    print(write_results(args.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
