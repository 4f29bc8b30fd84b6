"""River as a service: concurrent game sessions stream segments to the served `/river/v1` endpoints over HTTP.

    python -m bench.river_stream --wad freedoom2 --sessions 1,2,4,8,16 \
        --maps MAP01,MAP02,freedoom1:E1M1,freedoom1:E1M2 --segments 16 --out bench/results/river_stream.json

Each session records its own gameplay (ViZDoom, Freedoom; sessions on one map differ by seed, so content repeats
across them as it does across players), and streams it in real time: every `segment_s` it posts the segment's
H.264 bytes and two ground-truth frames, and the server answers the model to use. The client keeps a model cache:
the generic model from the start, then whatever it fetched. A model it must use but does not hold is a stall (it
fetches it then, and the segment is shown with the generic model); after each segment it asks
`/river/v1/prefetch` and fetches the predicted models within `--prefetch-kb` per segment. Delivered PSNR is what
the client shows (the model it held, upscaling the streamed frames) against the ground truth; chosen PSNR is what
the server's choice would have shown had it been on the client; offline PSNR is River run offline on the same
segments in the same order (bench.river's semantics: every segment checked, a fine-tune usable after its measured
seconds), the figure the delivered one is held to. The service is the same app `make run` starts (agent endpoints
included) with River's defaults: bench.river's generic game model and fine-tune budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.output import command_line, save_figure, write_results


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.river_stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="4", help="concurrent sessions; a list (1,2,4,8,16) sweeps them in turn")
    p.add_argument("--wad", default="freedoom2")
    p.add_argument("--maps", default="MAP01,MAP02",
                   help="maps the sessions play in turn; WAD:MAP plays a map of another WAD (freedoom1:E1M1)")
    p.add_argument("--segments", type=int, default=6, help="segments per session")
    p.add_argument("--segment-s", type=float, default=1.0)
    p.add_argument("--prefetch-kb", type=float, default=256.0, help="prefetch budget per segment")
    p.add_argument("--target-gain", type=float, default=None,
                   help="the quality gate's target, dB over the generic model (default: GateConfig's)")
    p.add_argument("--generic-steps", type=int, default=3000, help="the generic game model's budget (bench.river's)")
    p.add_argument("--finetune-steps", type=int, default=None, help="one fine-tune's steps (default: TrainConfig's)")
    p.add_argument("--no-offline", dest="offline", action="store_false",
                   help="skip the offline River replay (its PSNR is what the delivered PSNR is held to)")
    p.add_argument("--cache", default="build/river", help="bench.river's cache: the generic model and its data")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="the agent endpoints' model directory (default models/small)")
    p.add_argument("--root", default="build/river/stream", help="datasets, generic model and store")
    p.add_argument("--out", default="results.json")
    a = p.parse_args(argv)
    a.map_list = [tuple(m.split(":", 1)) if ":" in m else (a.wad, m) for m in a.maps.split(",") if m]
    try:
        a.session_counts = [int(n) for n in a.sessions.split(",") if n]
    except ValueError:
        p.error("--sessions takes comma-separated integers")
    if not a.session_counts or min(a.session_counts) < 1 or a.segments < 1 or not a.map_list:
        p.error("--sessions and --segments must be >= 1 and --maps must name a map")
    if a.generic_steps < 1 or (a.finetune_steps is not None and a.finetune_steps < 1):
        p.error("--generic-steps and --finetune-steps must be >= 1")
    from bench.river import TRAIN_MAPS

    if a.wad not in TRAIN_MAPS:
        p.error(f"--wad: the generic game model has training maps for {sorted(TRAIN_MAPS)} only")
    a.headline = 4 if 4 in a.session_counts else a.session_counts[0]
    from runtime.river.gameplay import GameplayConfig

    for wad, game_map in a.map_list:
        try:
            GameplayConfig(wad=wad, maps=(game_map,))
        except ValueError as e:
            p.error(f"--maps: {e}")
    return a


class Client:
    """One game session's player: a model cache and what it fetched."""

    def __init__(self, http, session: str, game: str):
        self.http, self.session, self.game = http, session, game
        self.models: dict[int, object] = {}
        self.fetched_bytes = self.prefetch_bytes = self.video_bytes = 0
        self.stalls = 0
        self.rows: list[dict] = []
        self.shown: list[tuple] = []  # (pair, model shown, scored frames) per segment

    def score(self) -> None:
        """PSNR-Y of each segment: delivered (the model the player held, upscaling the streamed frames) and chosen
        (the server's choice, had it been here)."""
        from runtime.river.sr import psnr_y, upscale

        for row, (pair, shown, picks) in zip(self.rows, self.shown, strict=True):
            frames = np.array(picks)
            row["psnr_db"] = psnr_y(upscale(self.models[shown], pair.lr[frames]), pair.hr[frames], pair.scale)
            chosen = row["psnr_db"] if row["model"] == shown else psnr_y(
                upscale(self.models[row["model"]], pair.lr[frames]), pair.hr[frames], pair.scale)
            row["chosen_psnr_db"] = chosen

    async def fetch(self, model_id: int) -> int:
        from safetensors.torch import load

        from runtime.river.sr import SRConfig
        from runtime.river.train import model_from_state

        r = await self.http.get(f"/river/v1/models/{model_id}")
        r.raise_for_status()
        self.models[model_id] = model_from_state(load(r.content), SRConfig(**json.loads(r.headers["x-sr-config"])))
        return len(r.content)

    async def segment(self, pair, video: bytes, pngs: list[bytes], prefetch_bytes: float) -> None:
        """`video`: the segment's streamed H.264, which `pair.lr` is decoded from; `pngs`: the ground truth of
        its first and last frames. What the player shows is scored after the stream (`score`), so that scoring
        does not compete with the service for this machine's cores."""
        picks = (0, len(pair.lr) - 1)
        self.video_bytes += len(video)
        files = [("video", ("seg.mp4", video, "video/mp4"))]
        files += [("ground_truth", (f"{k}.png", png, "image/png")) for k, png in zip(picks, pngs, strict=True)]
        t0 = time.perf_counter()
        r = await self.http.post("/river/v1/segments", files=files, data={
            "session": self.session, "game": self.game, "segment_id": pair.segment_id,
            "gt_frames": ",".join(map(str, picks))})
        roundtrip_ms = (time.perf_counter() - t0) * 1e3
        status = r.status_code
        d = r.json() if status == 200 else {}
        use = d.get("model_id", 0)
        stalled = use not in self.models
        if stalled:  # needed now and not here: shown with the generic model, fetched for the next segments
            self.stalls += 1
            self.fetched_bytes += await self.fetch(use)
        shown = 0 if stalled else use
        self.shown.append((pair, shown, picks))
        self.rows.append({"session": self.session, "segment": pair.segment_id, "status": status, "model": use,
                          "shown": shown, "stalled": stalled, "roundtrip_ms": roundtrip_ms,
                          "server_ms": d.get("server_ms", float("nan")), "decode_ms": d.get("decode_ms", float("nan")),
                          "lookup_ms": d.get("lookup_ms", float("nan")), "frames": len(pair.lr),
                          "gate": d.get("gate", "")})
        if status == 200:
            await self.prefetch(prefetch_bytes)

    async def prefetch(self, budget: float) -> None:
        p = await self.http.get("/river/v1/prefetch", params={"session": self.session, "game": self.game, "k": 3})
        for m in p.json().get("models", []) if p.status_code == 200 else []:
            if m not in self.models and budget > 0:
                n = await self.fetch(m)
                self.prefetch_bytes += n
                budget -= n


async def stream(url: str, sessions: list[tuple], a, prefix: str) -> tuple[list[Client], dict]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        clients = [Client(http, f"{prefix}{name}", wad) for name, (wad, _), *_ in sessions]
        for c in clients:  # the generic model, then what the game's players use most, within the budget
            c.fetched_bytes += await c.fetch(0)
            await c.prefetch(a.prefetch_kb * 1024)
        total = sum(len(s[2]) for s in sessions)
        with tqdm(total=total, desc=f"{len(sessions)} sessions", unit="seg", file=sys.stderr) as bar:
            async def run(c: Client, pairs: list, videos: dict[str, bytes], pngs: dict[str, list[bytes]]) -> None:
                start = time.monotonic()
                for k, pair in enumerate(pairs):
                    await asyncio.sleep(max(0.0, k * a.segment_s - (time.monotonic() - start)))
                    await c.segment(pair, videos[pair.segment_id], pngs[pair.segment_id], a.prefetch_kb * 1024)
                    bar.update(1)

            await asyncio.gather(*(run(c, pairs, videos, pngs) for c, (_, _, pairs, videos, pngs)
                                   in zip(clients, sessions, strict=True)))
        stats = (await http.get("/river/v1/stats")).json()
    return clients, stats


def markdown(data: dict) -> str:
    s, sweep = data["stream"], data["sweep"]
    lines = [f"Command: `{data['meta']['command']}`", "",
             f"Headline: {s['sessions']} concurrent sessions, each streaming 1-s segments in real time. Server times "
             "are measured inside the service (upload read + decoded, lookup, answer).", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v:.3f} |" if isinstance(v, float) else f"| {k.replace('_', ' ')} | {v} |"
              for k, v in s.items()]
    if "offline_psnr_db" in s:
        lines += ["", f"Delivered PSNR-Y {s['delivered_psnr_db']:.2f} dB vs River offline on the same segments "
                      f"{s['offline_psnr_db']:.2f} dB: {s['delivered_psnr_db'] - s['offline_psnr_db']:+.2f} dB (target "
                      f"within 0.3); of that, delivery (stalls) {s['delivered_psnr_db'] - s['chosen_psnr_db']:+.2f} dB "
                      f"and the service's choices {s['chosen_psnr_db'] - s['offline_psnr_db']:+.2f} dB."]
    cols = ("server_ms_p50", "server_ms_p99", "lookup_ms_per_frame_p99", "decode_ms_p50", "http_5xx", "stalls",
            "delivered_psnr_db", "chosen_psnr_db", "offline_psnr_db")
    lines += ["", "Sessions sweep (one service; later points find the models earlier points trained; offline River "
                  "is replayed up to the headline point):", "",
              "| sessions | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
              "|---" * (len(cols) + 1) + "|"]
    for n, row in sweep.items():
        cells = (row.get(c, "") for c in cols)
        lines.append(f"| {n} | " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = data["stream"]["sessions"]
    rows = [r for r in data["rows"] if r["sessions"] == head]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.6))
    for session in sorted({r["session"] for r in rows}):
        mine = [r for r in rows if r["session"] == session]
        line, = a1.plot([r["psnr_db"] for r in mine], marker="o", ms=3, label=session)
        if "offline_psnr_db" in mine[0]:
            a1.plot([r["offline_psnr_db"] for r in mine], ls=":", color=line.get_color())
    a1.set_xlabel("segment")
    a1.set_ylabel("delivered PSNR-Y (dB)")
    a1.set_title(f"{head} sessions (dotted: River offline)")
    a1.legend(fontsize=7)
    a2.hist([r["server_ms"] for r in rows], bins=20)
    a2.axvline(1000, color="k", ls="--", lw=1, label="1 s (real time)")
    a2.set_xlabel("server time per segment (ms)")
    a2.set_ylabel("segments")
    a2.legend(fontsize=8)
    sweep = data["sweep"]
    n = [int(k) for k in sweep]
    a3.plot(n, [v["server_ms_p50"] for v in sweep.values()], "o-", label="p50")
    a3.plot(n, [v["server_ms_p99"] for v in sweep.values()], "s-", label="p99")
    a3.axhline(1000, color="k", ls="--", lw=1)
    a3.set_xscale("log", base=2)
    a3.set_xlabel("concurrent sessions")
    a3.set_ylabel("server time per 1-s segment (ms)")
    a3.set_title("what an operator sizes by")
    a3.legend(fontsize=8)
    fig.suptitle("River through the service")
    save_figure(fig, stem)


def default_generic(a) -> Path:
    """bench.river's generic game model (its training maps and budget): the one River's defaults were chosen with."""
    from bench.river import TRAIN_MAPS, game_model, train_gameplay
    from runtime.river.dataset import DEFAULT_CRF
    from runtime.river.sr import SRConfig

    train = train_gameplay(a.wad, TRAIN_MAPS[a.wad].split(","), 2.0, 8.75)
    return game_model(train, SRConfig(), DEFAULT_CRF, a.generic_steps, Path(a.cache))[1]


def offline_river(sessions: list[tuple], counts: list[int], river: dict, a) -> dict[int, dict[tuple, float]]:
    """River offline on the segments the service saw, in its order: the sweep points in turn on one store, each
    point's sessions taking their k-th segment at k x segment_s. Every segment is checked (no skipped checks), a
    fine-tune is usable after its measured seconds on one trainer in stream time (bench.river's semantics), and
    between points every fine-tune finishes (the service keeps training while the benchmark scores a point).
    Returns per point the PSNR-Y of each (session, segment) on the frames its player was scored on."""
    import tempfile

    from bench.river import StreamClockTrainer
    from runtime.river.online import GateConfig, OnlineRiver
    from runtime.river.sr import psnr_y, upscale
    from runtime.river.store import ModelStore
    from runtime.river.train import TrainConfig, load_generic

    gate = GateConfig(**{k: river[k] for k in ("target_gain_db",) if k in river})
    ft = TrainConfig(**({"steps": river["finetune_steps"]} if "finetune_steps" in river else {}))
    trainer, start, out = StreamClockTrainer(), 0.0, {}
    with tempfile.TemporaryDirectory() as tmp:
        online = OnlineRiver(ModelStore(tmp), load_generic(river["generic"]), trainer, gate=gate, finetune=ft)
        for n in counts:
            out[n] = {}
            with tqdm(total=sum(len(s[2]) for s in sessions[:n]), desc=f"offline River, {n} sessions", unit="seg",
                      file=sys.stderr) as bar:
                for k in range(max(len(s[2]) for s in sessions[:n])):
                    trainer.now = start + k * a.segment_s
                    online.collect()
                    for name, (wad, _), pairs, *_ in sessions[:n]:
                        if k < len(pairs):
                            pair, picks = pairs[k], [0, len(pairs[k].lr) - 1]
                            d = online.process(pair.segment_id, pair.lr, pair.hr[picks], picks, game=wad)
                            out[n][(f"n{n}-{name}", pair.segment_id)] = psnr_y(
                                upscale(online.model(d.model_id), pair.lr[picks]), pair.hr[picks], pair.scale)
                            bar.update(1)
            start = trainer.now = max(trainer.free_at, trainer.now + a.segment_s)
            online.collect(wait=True)
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from deployments.launch import start, stop
    from deployments.river_api import encode_png
    from runtime.river.dataset import build_dataset, load_pairs, load_streams
    from runtime.river.gameplay import GameplayConfig
    from runtime.river.train import generic_config
    from runtime.serving.config import ServeSettings

    root = Path(a.root).resolve()
    shutil.rmtree(root / "store", ignore_errors=True)  # every run starts with an empty store
    river = {"generic": str(default_generic(a)), "store_uri": str(root / "store"),
             **({} if a.target_gain is None else {"target_gain_db": a.target_gain}),
             **({} if a.finetune_steps is None else {"finetune_steps": a.finetune_steps})}
    scale = generic_config(river["generic"]).scale
    sessions = []
    for i in range(max(a.session_counts)):
        wad, game_map = a.map_list[i % len(a.map_list)]
        cfg = GameplayConfig(wad=wad, maps=(game_map,), segments_per_map=a.segments,
                             segment_s=a.segment_s, fps=8.75, seed=i)
        index = build_dataset(cfg, scale=scale, root=root / "datasets")
        pairs = load_pairs(index)
        pngs = {p.segment_id: [encode_png(p.hr[0]), encode_png(p.hr[-1])] for p in pairs}  # before streaming
        sessions.append((f"player-{i}", (wad, game_map), pairs, load_streams(index), pngs))
    settings = ServeSettings(river=river, **({"model": a.model} if a.model else {}))
    url = start(settings, a.port)
    sweep, rows = {}, []
    try:
        for n in a.session_counts:  # one service: later points find the models earlier ones trained
            clients, stats = asyncio.run(stream(url, sessions[:n], a, f"n{n}-"))
            for c in clients:
                c.score()
            point = [{**r, "sessions": n} for c in clients for r in c.rows]
            sweep[str(n)] = summarize(point, clients, stats)
            rows += point
    finally:
        stop(settings)
    if a.offline:  # up to the headline point: the replay trains as much as the service did, on this process
        counts = a.session_counts[:a.session_counts.index(a.headline) + 1]
        for n, psnr in offline_river(sessions, counts, river, a).items():
            point = [r for r in rows if r["sessions"] == n]
            for r in point:
                r["offline_psnr_db"] = psnr[(r["session"], r["segment"])]
            sweep[str(n)]["offline_psnr_db"] = float(np.mean([r["offline_psnr_db"] for r in point]))
    data = {"meta": {"command": command_line("bench.river_stream", argv), "sessions": a.session_counts,
                     "maps": [f"{w}:{m}" for w, m in a.map_list], "river": river},
            "stream": sweep[str(a.headline)], "sweep": sweep, "rows": rows}
    print(write_results(a.out, data, markdown, plot))
    return 0


def summarize(rows: list[dict], clients: list[Client], stats: dict) -> dict:
    """One sweep point. Store, gate and fine-tune counts are the service's totals so far."""
    ok = [r for r in rows if r["status"] == 200]
    server = np.array([r["server_ms"] for r in ok])
    per_frame = np.array([r["lookup_ms"] / r["frames"] for r in ok])
    return {"sessions": len(clients), "segments": len(rows), "http_5xx": sum(r["status"] >= 500 for r in rows),
            "http_4xx": sum(400 <= r["status"] < 500 for r in rows),
            "delivered_psnr_db": float(np.mean([r["psnr_db"] for r in rows])),
            "chosen_psnr_db": float(np.mean([r["chosen_psnr_db"] for r in rows])),
            "stalls": sum(c.stalls for c in clients),
            "server_ms_p50": float(np.percentile(server, 50)), "server_ms_p99": float(np.percentile(server, 99)),
            "decode_ms_p50": float(np.percentile([r["decode_ms"] for r in ok], 50)),
            "roundtrip_ms_p99": float(np.percentile([r["roundtrip_ms"] for r in ok], 99)),
            "lookup_ms_p99": float(np.percentile([r["lookup_ms"] for r in ok], 99)),
            "lookup_ms_per_frame_p99": float(np.percentile(per_frame, 99)),
            "prefetch_hit_rate": stats["prefetch_hit_rate"],
            "video_bytes": sum(c.video_bytes for c in clients),
            "prefetch_bytes": sum(c.prefetch_bytes for c in clients),
            "model_fetch_bytes": sum(c.fetched_bytes for c in clients),  # generic at start + stalls
            "gate_checks": stats["gate"]["checks"], "gate_checks_skipped": stats["gate"]["checks_skipped"],
            "finetunes_done": stats["finetunes"]["done"], "models_in_store": stats["models"]}


if __name__ == "__main__":
    raise SystemExit(main())
