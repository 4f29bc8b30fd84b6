"""River's per-frame path: how often the lookup finds a model of the same content, what the lookup costs as the
store grows, and what the SR model costs per frame.

    python -m bench.river_lookup --wad freedoom2 --maps MAP01,MAP02,MAP03 --segments 24 --models 10,100,1000

1. Retrieval, leave one out: every segment is a model keyed by the K-means centroids of its own patch features;
   each segment then looks up the others. Reported: the share of patches, frames (per-frame vote) and segments
   (segment vote) that land on a model of the same map, with and without the learned overlay mask (HUD), and
   with the online path's limit of patches per frame.
   Chance is 1 / maps.
2. Cost: `online.lookup` (features of every frame + one FAISS search + both votes, the code the online path
   runs) over every frame of every segment, against stores of each size in `--models`. The stores are filled with
   real keys: model i is keyed by the centroids of the features of a random 3-frame window of a random segment
   (lookup never reads weights, so all models share one small weight file's contents).
3. SR speed: the default model (`SRConfig()`) upscaling real frames to 1280x720, one frame per call, on this
   machine's CPU (all its threads), after a warm-up: frames/s and parameters.
Writes JSON, a Markdown table and a plot.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.output import command_line, save_figure, write_results
from runtime.river.dataset import build_dataset, load_pairs
from runtime.river.features import OverlayMask, frame_patch_features, kmeans_keys
from runtime.river.gameplay import GameplayConfig
from runtime.river.online import LOOKUP_PATCHES, lookup
from runtime.river.sr import EDSR, SRConfig, upscale
from runtime.river.store import ModelStore


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.river_lookup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wad", default="freedoom2")
    p.add_argument("--maps", default="MAP01,MAP02,MAP03")
    p.add_argument("--segments", type=int, default=24, help="segments, split evenly over the maps")
    p.add_argument("--segment-s", type=float, default=2.0)
    p.add_argument("--fps", type=float, default=8.75)
    p.add_argument("--crf", type=int, default=28)
    p.add_argument("--models", default="10,100,1000", help="store sizes to time the lookup against")
    p.add_argument("--keys-per-model", type=int, default=16)
    p.add_argument("--cache", default="build/river")
    p.add_argument("--out", default="river_lookup.json")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(m) for m in args.models.split(",") if m]
    except ValueError:
        p.error(f"--models must be comma-separated integers, got {args.models!r}")
    maps = tuple(m for m in args.maps.split(",") if m)
    if args.segments < 2 * len(maps) or not args.sizes or min(args.sizes) < 1:
        p.error("--segments must be >= 2 per map (retrieval is leave-one-out) and --models sizes >= 1")
    try:
        args.cfg = GameplayConfig(args.wad, maps, -(-args.segments // len(maps)), args.segment_s, args.fps, seed=0)
    except ValueError as e:
        p.error(str(e))
    return args


def retrieval(pairs, overlay: np.ndarray | None, keys_per_model: int, per_frame: int | None) -> dict:
    """Leave-one-out same-map shares of patches, frames and segments (a flat inner-product index per left-out
    segment, as the store's)."""
    import faiss

    feats = [[frame_patch_features(f[None], overlay, per_frame=per_frame)[0] for f in p.lr] for p in pairs]
    keys = [kmeans_keys(np.concatenate(fs), keys_per_model) for fs in feats]
    patch_ok, frame_ok, segment_ok = [], [], []
    for i, p in enumerate(pairs):
        others = [j for j in range(len(pairs)) if j != i]
        index = faiss.IndexFlatIP(keys[0].shape[1])
        index.add(np.concatenate([keys[j] for j in others]))
        owner = np.concatenate([[j] * len(keys[j]) for j in others])
        frame_votes = []
        for f in feats[i]:
            if not len(f):
                continue
            found = owner[index.search(f, 1)[1][:, 0]]
            patch_ok.extend(pairs[m].map == p.map for m in found)
            frame_votes.append(int(np.bincount(found).argmax()))
            frame_ok.append(pairs[frame_votes[-1]].map == p.map)
        segment_ok.append(bool(frame_votes) and pairs[int(np.bincount(frame_votes).argmax())].map == p.map)
    return {"patch": float(np.mean(patch_ok)), "frame": float(np.mean(frame_ok)),
            "segment": float(np.mean(segment_ok))}


def fill_store(store: ModelStore, pairs, n: int, overlay: np.ndarray | None, keys_per_model: int,
               rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    sr = SRConfig()
    state = EDSR(sr).state_dict()
    for _ in tqdm(range(n - len(store)), desc=f"filling store to {n}", unit="model", file=sys.stderr):
        p = pairs[rng.integers(len(pairs))]
        start = int(rng.integers(0, max(1, len(p.lr) - 2)))
        f = frame_patch_features(p.lr[start:start + 3], overlay, per_frame=LOOKUP_PATCHES)[0]
        if len(f):
            store.add(state, sr, kmeans_keys(f, keys_per_model, seed=int(rng.integers(1 << 30))),
                      source_segments=[p.segment_id], psnr_gain_db=0.0, train_s=0.0)


def cost(pairs, sizes: list[int], overlay: np.ndarray | None, keys_per_model: int) -> dict:
    """Lookup milliseconds per frame (p50, p99 over segments) per store size; the store grows between sizes."""
    rng = np.random.default_rng(0)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        store = ModelStore(d)
        for n in sorted(sizes):
            while len(store) < n:
                fill_store(store, pairs, n, overlay, keys_per_model, rng)
            per_frame = []
            for p in pairs:
                t0 = time.perf_counter()
                lookup(store, p.lr, overlay)
                per_frame.append((time.perf_counter() - t0) * 1e3 / len(p.lr))
            out[str(n)] = {"models": len(store), "keys": len(store) * keys_per_model,
                           "ms_per_frame_p50": float(np.median(per_frame)),
                           "ms_per_frame_p99": float(np.percentile(per_frame, 99))}
    return out


def sr_speed(pairs, frames: int = 16) -> dict:
    sr = SRConfig()
    model = EDSR(sr).eval()
    lr = np.concatenate([p.lr for p in pairs])[:frames]
    upscale(model, lr[:2], batch=1)
    t0 = time.perf_counter()
    upscale(model, lr, batch=1)
    s = (time.perf_counter() - t0) / len(lr)
    return {"config": sr.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
            "output": [int(lr.shape[1]) * sr.scale, int(lr.shape[2]) * sr.scale],
            "torch_threads": torch.get_num_threads(),
            "ms_per_frame": s * 1e3, "fps": 1 / s}


def run(args) -> dict:
    pairs = load_pairs(build_dataset(args.cfg, scale=SRConfig().scale, crf=args.crf,
                                     root=Path(args.cache) / "datasets"))[: args.segments]
    mask = OverlayMask()
    for p in pairs:
        mask.update(p.lr)
    overlay = mask.positions()
    return {"maps": list(args.cfg.maps), "segments": len(pairs), "frames": sum(len(p.lr) for p in pairs),
            "frame_size": list(pairs[0].lr.shape[1:3]),
            "overlay_positions": int(overlay.sum()) if overlay is not None else 0,
            "retrieval": {"all patches, no mask": retrieval(pairs, None, args.keys_per_model, None),
                          "all patches, overlay mask": retrieval(pairs, overlay, args.keys_per_model, None),
                          f"online: overlay mask, top {LOOKUP_PATCHES} per frame":
                              retrieval(pairs, overlay, args.keys_per_model, LOOKUP_PATCHES)},
            "chance": 1 / len(args.cfg.maps),
            "cost": cost(pairs, args.sizes, overlay, args.keys_per_model),
            "sr_speed": sr_speed(pairs)}


def markdown(data: dict) -> str:
    lines = [f"Command: `{data['meta']['command']}`", "",
             f"{data['segments']} segments ({data['frames']} frames of {data['frame_size'][1]}x"
             f"{data['frame_size'][0]}) of {', '.join(data['maps'])}; overlay mask: "
             f"{data['overlay_positions']} grid positions.", "",
             f"Same-map retrieval, leave one out (chance {data['chance']:.2f}):", "",
             "| features | patch | frame vote | segment vote |", "|---|---|---|---|"]
    for name, r in data["retrieval"].items():
        lines.append(f"| {name} | {r['patch']:.3f} | {r['frame']:.3f} | {r['segment']:.3f} |")
    lines += ["", "Lookup + vote cost (features, one FAISS search, votes):", "",
              "| models | keys | ms/frame p50 | ms/frame p99 |", "|---|---|---|---|"]
    for r in data["cost"].values():
        lines.append(f"| {r['models']} | {r['keys']} | {r['ms_per_frame_p50']:.2f} | {r['ms_per_frame_p99']:.2f} |")
    sp = data["sr_speed"]
    lines += ["", f"SR model {sp['config']} ({sp['parameters']:,} parameters) to {sp['output'][1]}x{sp['output'][0]} "
              f"on this CPU ({sp['torch_threads']} threads): {sp['ms_per_frame']:.0f} ms per frame, "
              f"{sp['fps']:.1f} frames/s."]
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    levels = ["patch", "frame", "segment"]
    width = 0.8 / len(data["retrieval"])
    for k, (name, r) in enumerate(data["retrieval"].items()):
        a.bar(np.arange(3) + width * k, [r[lv] for lv in levels], width=width, label=name)
    a.axhline(data["chance"], color="grey", ls=":", label="chance")
    a.set(xticks=np.arange(3) + 0.4 - width / 2, xticklabels=levels, ylim=(0, 1.15),
          ylabel="same-map share", title="retrieval (leave one out)")
    a.legend(fontsize=8, loc="upper left")
    rows = list(data["cost"].values())
    b.plot([r["models"] for r in rows], [r["ms_per_frame_p50"] for r in rows], marker="o", label="p50")
    b.plot([r["models"] for r in rows], [r["ms_per_frame_p99"] for r in rows], marker="o", label="p99")
    b.axhline(5.0, color="grey", ls=":", label="5 ms goal")
    b.set(xscale="log", xlabel="models in the store", ylabel="ms per frame", title="lookup + vote")
    b.legend()
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = run(args)
    data["meta"] = {"command": command_line("bench.river_lookup", argv)}
    print(write_results(args.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
