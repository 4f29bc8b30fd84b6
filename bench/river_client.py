"""River's player on this CPU: 720p frames per second and per-frame latency for each SR runtime and model size.

    python -m bench.river_client --wad freedoom2 --maps MAP01,MAP02 --segments 8 --out bench/results/river_client.json

A stream of real Freedoom segments (H.264 at the stream's CRF, 640x360 -> 1280x720 at x2) is played by
`runtime.river.client.Player` exactly as `agentriver river-play` plays it: decode (PyAV) + SR of every frame. Each
runtime plays the default model shape (SRConfig) with the game's generic model; the size sweep plays other shapes
with the fastest runtime, to find the largest model that keeps 20 frames/s. ONNX Runtime (fp32) is measured too
when it is installed. The still (`<out>_still.png`) puts bicubic, River (a content model fine-tuned on that
segment's own content, as River's store holds) and the ground truth side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bench.output import command_line, save_figure, write_results
from bench.river import game_model, gameplay_arguments, gameplay_configs
from runtime.river.client import ModelCache, Player, StoreModels, StreamSegment
from runtime.river.dataset import build_dataset, load_pairs, load_streams
from runtime.river.enhance import Enhancer
from runtime.river.sr import EDSR, SRConfig, psnr_y, upscale
from runtime.river.store import ModelStore
from runtime.river.train import TrainConfig, finetune, model_from_state

TARGET_FPS, TARGET_P99_MS = 20.0, 50.0


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.river_client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    gameplay_arguments(p, "MAP01,MAP02", 8)
    p.add_argument("--crf", type=int, default=28)
    p.add_argument("--runtimes", default="fp32,bf16,compiled,onnxruntime")
    p.add_argument("--sizes", default="2x16,4x16,4x24,8x16,8x32", help="blocks x channels, with --sweep-runtime")
    p.add_argument("--sweep-runtime", default="compiled")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--generic-steps", type=int, default=3000)
    p.add_argument("--finetune-steps", type=int, default=TrainConfig().steps, help="the still's content model")
    p.add_argument("--cache", default="build/river")
    p.add_argument("--out", default="river_client.json")
    a = p.parse_args(argv)
    gameplay_configs(p, a)
    a.runtime_list = [r for r in a.runtimes.split(",") if r]
    try:
        a.size_list = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",") if s]
    except ValueError:
        p.error("--sizes takes blocks x channels, comma-separated (e.g. 4x16,8x32)")
    return a


class OrtEnhancer:
    """ONNX Runtime (CPU) with the same interface as `Enhancer`: the model exported once per weights."""

    runtime = "onnxruntime"

    def __init__(self, threads: int | None, workdir: Path):
        import onnxruntime

        self._ort, self.threads, self.workdir, self.sr = onnxruntime, threads, workdir, None

    def load(self, state, sr: SRConfig) -> None:
        model = model_from_state(state, sr)
        path = self.workdir / "model.onnx"
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {2: "h", 3: "w"}}, dynamo=False)
        so = self._ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        self._session = self._ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.sr = sr

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        x = frame.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        y = self._session.run(None, {"x": x})[0][0]
        return (np.clip(y, 0, 1) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)


def macs_per_frame(sr: SRConfig, width: int, height: int) -> int:
    """Multiply-accumulates of the network's convolutions for one low-res frame (bicubic not counted)."""
    model = EDSR(sr)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return sum(c.in_channels * c.out_channels * c.kernel_size[0] * c.kernel_size[1] for c in convs) * width * height


def play(segments, generic, sr, enhancer, store: ModelStore, lr_size: tuple[int, int]) -> dict:
    """Every segment with model 0 (`generic`, shaped `sr`); `lr_size`: the stream's (width, height)."""
    player = Player(StoreModels(store, (generic, sr)), enhancer, ModelCache())
    player.play(segments[:1])  # warm-up (a compiled runtime compiles here): not measured
    summary = player.play(segments).summary()
    macs = macs_per_frame(sr, *lr_size)
    summary.update(model=f"{sr.blocks}x{sr.channels}", gmac_per_frame=macs / 1e9,
                   achieved_gflops=2 * macs / 1e9 / (summary["sr_ms_p50"] / 1e3))
    return summary


def still(pair, content, sr, out: Path) -> dict:
    """Bicubic | River's content model | ground truth, a 320x180 crop of the first frame at 1280x720."""
    import matplotlib.pyplot as plt

    lr, hr = pair.lr[:1], pair.hr[:1]
    bic, riv = upscale(None, lr, sr.scale), upscale(content, lr)
    y, x = _busiest(hr[0], 180, 320)
    fig, axes = plt.subplots(1, 3, figsize=(12, 2.9))
    for ax, img, label in zip(axes, (bic, riv, hr), ("bicubic", "River (content model)", "ground truth"),
                              strict=True):
        ax.imshow(img[0, y:y + 180, x:x + 320])
        score = "" if img is hr else f" {psnr_y(img, hr, sr.scale):.2f} dB"
        ax.set_title(label + score, fontsize=9)
        ax.axis("off")
    save_figure(fig, out)
    return {"bicubic_db": psnr_y(bic, hr, sr.scale), "river_db": psnr_y(riv, hr, sr.scale)}


def _busiest(frame: np.ndarray, h: int, w: int) -> tuple[int, int]:
    """The crop with the most edges, away from the HUD at the bottom."""
    g = np.abs(np.diff(frame.mean(axis=2), axis=1))
    best, at = -1.0, (0, 0)
    for y in range(0, frame.shape[0] * 3 // 4 - h, 40):
        for x in range(0, frame.shape[1] - w, 40):
            v = float(g[y:y + h, x:x + w].sum())
            if v > best:
                best, at = v, (y, x)
    return at


def run(a) -> dict:
    import tempfile

    cache = Path(a.cache)
    sr = SRConfig()
    index = build_dataset(a.eval_cfg, scale=sr.scale, crf=a.crf, root=cache / "datasets")
    pairs, videos = load_pairs(index)[:a.segments], load_streams(index)
    gt = [0, len(pairs[0].lr) // 2]
    lr_size = (pairs[0].lr.shape[2], pairs[0].lr.shape[1])
    segments = [StreamSegment(p.segment_id, videos[p.segment_id], 0, p.hr[gt], gt) for p in pairs]
    results, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "store")  # empty: every segment plays model 0
        game, _ = game_model(a.train_cfg, sr, a.crf, a.generic_steps, cache)
        for runtime in a.runtime_list:
            if runtime == "onnxruntime":
                try:
                    enhancer = OrtEnhancer(a.threads, Path(tmp))
                except ImportError:
                    print("onnxruntime is not installed: skipped", file=sys.stderr)
                    continue
            else:
                enhancer = Enhancer(runtime, a.threads)
            results[runtime] = play(segments, game.state, sr, enhancer, store, lr_size)
            print(f"{runtime}: {results[runtime]['fps']:.1f} fps", file=sys.stderr)
        for blocks, channels in a.size_list:
            shape = SRConfig(blocks=blocks, channels=channels, scale=sr.scale)
            state = EDSR(shape).state_dict()  # speed does not depend on the weights
            sizes[f"{blocks}x{channels}"] = play(segments, state, shape, Enhancer(a.sweep_runtime, a.threads), store,
                                                   lr_size)
            print(f"{blocks}x{channels}: {sizes[f'{blocks}x{channels}']['fps']:.1f} fps", file=sys.stderr)
    content = finetune(game.state, sr, [(pairs[0].lr, pairs[0].hr)], TrainConfig(steps=a.finetune_steps))
    still_scores = still(pairs[0], model_from_state(content.state, sr), sr, Path(a.out).with_name(
        Path(a.out).stem + "_still"))
    default = results.get("compiled") or next(iter(results.values()))
    fast = [k for k, v in sizes.items() if v["fps"] >= TARGET_FPS and v["frame_ms_p99"] <= TARGET_P99_MS]
    summary = {"fps": default["fps"], "frame_ms_p99": default["frame_ms_p99"], "runtime": default["runtime"],
               "model": f"{sr.blocks}x{sr.channels}", "frames": default["frames"],
               "largest_real_time_model": max(fast, key=lambda k: sizes[k]["gmac_per_frame"]) if fast else None,
               "still": still_scores}
    return {"summary": summary, "runtimes": results, "sizes": sizes}


def markdown(data: dict) -> str:
    s = data["summary"]
    lines = [f"Command: `{data['meta']['command']}`", "",
             f"Default client: model {s['model']}, runtime {s['runtime']}: **{s['fps']:.1f} frames/s** at 1280x720, "
             f"decode + SR p99 {s['frame_ms_p99']:.1f} ms per frame (targets {TARGET_FPS:.0f} fps, p99 "
             f"{TARGET_P99_MS:.0f} ms). Largest model that meets both: {s['largest_real_time_model']}.", "",
             "| runtime | model | fps | decode ms p50 | SR ms p50 | frame ms p99 | PSNR-Y dB | GMAC/frame | GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, table in (("runtimes", data["runtimes"]), ("sizes", data["sizes"])):
        for key, r in table.items():
            label = key if name == "runtimes" else f"{data['meta']['sweep_runtime']} (size sweep)"
            lines.append(f"| {label} | {r['model']} | {r['fps']:.1f} | {r['decode_ms_p50']:.1f} | {r['sr_ms_p50']:.1f}"
                         f" | {r['frame_ms_p99']:.1f} | {r['psnr_db']:.2f} | {r['gmac_per_frame']:.2f} | "
                         f"{r['achieved_gflops']:.0f} |")
    st = s["still"]
    lines += ["", f"Still (`{Path(data['meta']['out']).stem}_still.png`): bicubic {st['bicubic_db']:.2f} dB, River's "
              f"content model {st['river_db']:.2f} dB on that frame.",
              "PSNR-Y in the size sweep is of untrained weights (speed only); the runtimes' rows play the game's "
              "generic model."]
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    rt = data["runtimes"]
    a1.bar(list(rt), [r["fps"] for r in rt.values()], color="tab:blue")
    a1.axhline(TARGET_FPS, color="k", ls="--", lw=1, label=f"{TARGET_FPS:.0f} fps target")
    a1.set_ylabel("720p frames/s (decode + SR)")
    a1.set_title(f"runtimes, model {data['summary']['model']}")
    a1.legend(fontsize=8)
    sz = data["sizes"]
    a2.plot([r["gmac_per_frame"] for r in sz.values()], [r["frame_ms_p99"] for r in sz.values()], "o-")
    for k, r in sz.items():
        a2.annotate(k, (r["gmac_per_frame"], r["frame_ms_p99"]), fontsize=8)
    a2.axhline(TARGET_P99_MS, color="k", ls="--", lw=1, label=f"{TARGET_P99_MS:.0f} ms p99 target")
    a2.set_xlabel("GMAC per frame")
    a2.set_ylabel("decode + SR p99 (ms per frame)")
    a2.set_title(f"model size ({data['meta']['sweep_runtime']})")
    a2.legend(fontsize=8)
    save_figure(fig, stem)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    data = run(a)
    data["meta"] = {"command": command_line("bench.river_client", argv), "sweep_runtime": a.sweep_runtime,
                    "out": a.out, "threads": a.threads or torch.get_num_threads()}
    print(write_results(a.out, data, markdown, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
