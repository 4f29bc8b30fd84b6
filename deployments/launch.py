"""Start the agent service on a local Ray (the embedded default) and either keep serving or run the demo.

    python -m deployments.launch serve [--port 8000]   # `make serve`
    python -m deployments.launch demo                  # `make run`: the service, a short agent workload and a
                                                       # short River stream through it
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

from runtime.serving.agent_client import AgentResult, Turn, run_agent
from runtime.serving.config import ServeSettings

TOOLS = ("search", "code", "calculator")


def start(settings: ServeSettings, port: int) -> str:
    import ray
    from ray import serve

    from deployments.app import build_app

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings.model_dump()), name="agentriver", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def stop(settings: ServeSettings) -> None:
    import ray
    from ray import serve

    from actors.global_scheduler import shutdown_schedulers

    shutdown_schedulers(settings)
    serve.shutdown()
    ray.shutdown()


def demo_turns(rng: random.Random, segments: int) -> list[Turn]:
    turns = []
    for k in range(segments):
        last = k == segments - 1
        words = " ".join(rng.choice(("plan", "fetch", "parse", "compare", "report", "retry")) for _ in range(
            rng.randint(20, 120)))
        turns.append(Turn(words, rng.randint(16, 64), "" if last else rng.choice(TOOLS),
                          0.0 if last else rng.uniform(0.5, 2.0)))
    return turns


async def demo(url: str, model: str, agents: int, seed: int) -> list[AgentResult]:
    from openai import AsyncOpenAI

    rng = random.Random(seed)
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=os.environ.get("AGENTRIVER_API_KEY", "unused"),
                         max_retries=0, timeout=600)

    async def agent(i: int) -> AgentResult:
        await asyncio.sleep(i * 0.5)  # staggered arrivals
        return await run_agent(client, model, f"demo-{i}", demo_turns(rng, rng.randint(2, 4)), stream=i % 2 == 1)

    return list(await asyncio.gather(*(agent(i) for i in range(agents))))


RIVER_STREAM = dict(wad="freedoom2", maps=("MAP01",), segments_per_map=4, segment_s=1.0, fps=8.75, seed=0)
DEMO_GENERIC_STEPS, DEMO_FINETUNE_STEPS = 150, 100  # make run stays short; the defaults are TrainConfig's
RIVER_TRAIN = dict(wad="freedoom2", maps=("MAP10",), segments_per_map=2, segment_s=1.0, fps=8.75, seed=0)


def river_settings(root: Path) -> dict:
    """River for the demo: a generic SR model trained briefly on another map's gameplay (cached under `root`)."""
    from runtime.river.dataset import build_dataset, load_pairs
    from runtime.river.gameplay import GameplayConfig
    from runtime.river.sr import SRConfig
    from runtime.river.train import TrainConfig, generic_model, generic_path

    cfg, train, sr = GameplayConfig(**RIVER_TRAIN), TrainConfig(steps=DEMO_GENERIC_STEPS), SRConfig()
    index = build_dataset(cfg, scale=sr.scale, root=root / "datasets", progress=False)
    key = {"demo": f"{index.parent.name}/{index.name}"}
    generic_model(lambda: [(p.lr, p.hr) for p in load_pairs(index)], key, sr, train, root / "generic", progress=False)
    return {"generic": str(generic_path(key, sr, train, root / "generic")), "store_uri": str(root / "store"),
            "finetune_steps": DEMO_FINETUNE_STEPS}


def river_demo(url: str, root: Path) -> None:
    """A game session streams four one-second segments of MAP01 through /river/v1 (H.264 + two ground-truth
    frames each); each is answered from the lookup (the first player's find nothing: misses, fine-tuned as Ray
    tasks); a second player of the same map then finds those models while the quality gate checks them off the
    request path.
    Finally it fetches the model it was told to use and asks what to prefetch."""
    import httpx

    from deployments.river_api import encode_png
    from runtime.river.dataset import build_dataset, load_pairs, load_streams
    from runtime.river.gameplay import GameplayConfig
    from runtime.river.online import GateConfig
    from runtime.river.sr import SRConfig
    from runtime.river.train import TrainConfig

    sr, ft, gate = SRConfig(), TrainConfig(), GateConfig()
    index = build_dataset(GameplayConfig(**RIVER_STREAM), scale=sr.scale, root=root / "datasets",
                          progress=False)
    pairs, videos = load_pairs(index), load_streams(index)  # the frames, and the H.264 stream they decode from
    headers = {"Authorization": f"Bearer {os.environ['AGENTRIVER_API_KEY']}"} \
        if os.environ.get("AGENTRIVER_API_KEY") else {}
    print(f"\nRiver: {len(pairs)} segments of {RIVER_STREAM['maps'][0]} through POST /river/v1/segments")
    print(f"defaults (bench.river_headroom): x{sr.scale} SR, {sr.blocks} blocks x {sr.channels} channels; fine-tunes "
          f"of {ft.steps} steps ({ft.schedule} rate {ft.lr:g}); the gate fine-tunes below {gate.target_gain_db} dB "
          f"over the generic model (this demo trains {DEMO_GENERIC_STEPS} + {DEMO_FINETUNE_STEPS} steps to stay short)")
    print(f"{'session':<9} {'segment':<22} {'model':>5} {'voted':>5} {'gain dB':>8} {'gate':>7} "
          f"{'lookup ms':>9}")
    with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
        def stream(session: str) -> list[int]:
            used = []
            for p in pairs:
                picks = (0, len(p.lr) - 1)
                files = [("video", ("seg.mp4", videos[p.segment_id], "video/mp4"))]
                files += [("ground_truth", (f"{k}.png", encode_png(p.hr[k]), "image/png")) for k in picks]
                r = c.post("/river/v1/segments", files=files, data={"session": session, "game": "freedoom2",
                                                                   "segment_id": p.segment_id,
                                                                   "gt_frames": ",".join(map(str, picks))})
                r.raise_for_status()
                d = r.json()
                used.append(d["model_id"])
                print(f"{session:<9} {p.segment_id:<22} {d['model_id']:>5} {d['voted_id']:>5} {d['gain_db']:>8.2f} "
                      f"{d['gate']:>7} {d['lookup_ms']:>9.1f}")
            return used

        stream("player-1")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            stats = c.get("/river/v1/stats").json()  # the gate's checks, the fine-tunes they scheduled, their scores
            if stats["gate"]["in_flight"] + stats["finetunes"]["pending_in_store"] == 0:
                break
            time.sleep(1)
        used = stream("player-2")
        model = c.get(f"/river/v1/models/{used[-1]}")
        print(f"GET /river/v1/models/{used[-1]}: {len(model.content)} bytes, ETag {model.headers['etag'][:18]}...\"")
        print("GET /river/v1/prefetch?session=player-2:", c.get("/river/v1/prefetch",
                                                               params={"session": "player-2"}).json()["models"])
        print("GET /river/v1/stats:", json.dumps(c.get("/river/v1/stats").json()))
    river_player(url, root, pairs, videos, used)


def river_player(url: str, root: Path, pairs: list, videos: dict[str, bytes], models: list[int]) -> None:
    """Player 2's stream played by River's player (`agentriver river-play`) with the models the service named."""
    from runtime.river.client import HttpModels, Player, StreamSegment, write_stream
    from runtime.river.enhance import Enhancer

    picks = [0, len(pairs[0].lr) - 1]
    segments = [StreamSegment(p.segment_id, videos[p.segment_id], m, p.hr[picks], picks)
                for p, m in zip(pairs, models, strict=True)]
    directory = write_stream(root / "stream-player-2", segments)
    source = HttpModels(url, os.environ.get("AGENTRIVER_API_KEY"))
    enhancer = Enhancer()
    print(f"\nRiver's player: {directory}, SR runtime {enhancer.runtime} (the first segment warms it up, "
          "compiling the model in ~35 s where the runtime is compiled; not timed)")
    player = Player(source, enhancer, session="player-2", game="freedoom2")
    player.play(segments[:1])  # warm-up
    report = player.play(segments)
    source.close()
    print(f"{pairs[0].hr.shape[2]}x{pairs[0].hr.shape[1]} output: {report.describe()}")
    print(f"the same from a shell: .venv/bin/agentriver river-play {directory} --server {url} --session player-2")


def report(results: list[AgentResult], metrics: str) -> None:
    print(f"{'session':<10} {'segments':>8} {'tokens':>7} {'JCT s':>7} {'waited s':>9} {'level':>5} {'engine':<20}")
    for r in results:
        v = r.view
        print(f"{r.session_id:<10} {r.segments:>8} {r.completion_tokens:>7} {r.jct_s:>7.2f} {v['waited_s']:>9.3f} "
              f"{v['queue_level']:>5} {v['engine']:<20}")
    jcts = [r.jct_s for r in results]
    print(f"average JCT {sum(jcts) / len(jcts):.2f} s over {len(jcts)} agent jobs")
    print("\nGET /v1/sessions/demo-0 (before close):")
    print(json.dumps(results[0].view, indent=1))
    print("\nGET /metrics (excerpt):")
    for line in metrics.splitlines():
        if line.startswith(("agentriver_job_completion_seconds_count", "agentriver_job_completion_seconds_sum",
                            "agentriver_segment_seconds_count", "agentriver_queue_segments",
                            "agentriver_kv_decisions_total", "agentriver_engine_kv_usage")):
            print(" ", line)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m deployments.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("serve", "demo"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--model", help="model directory (default: models/small)")
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--policy", default="astraea")
    p.add_argument("--agents", type=int, default=6, help="demo: concurrent agent jobs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-river", action="store_true", help="serve the agent endpoints only")
    p.add_argument("--river-dir", default="build/river/demo", help="River's store, datasets and generic model")
    a = p.parse_args(argv)
    river_root = Path(a.river_dir).resolve()
    river = None if a.no_river else river_settings(river_root)
    settings = ServeSettings(**{k: v for k, v in {"model": a.model, "engines": a.engines, "policy": a.policy,
                                                  "river": river}.items() if v is not None})
    t0 = time.monotonic()
    print(f"starting Ray, Serve and {settings.engines} vLLM engine(s) for {settings.model} ...", flush=True)
    url = start(settings, a.port)
    print(f"serving {settings.served_model_name!r} at {url}/v1 (started in {time.monotonic() - t0:.0f} s)",
          flush=True)
    try:
        if a.mode == "serve":
            print("OpenAI-compatible: POST /v1/chat/completions, GET /v1/models, /v1/sessions/{id}, /metrics. "
                  "Ctrl-C stops.", flush=True)
            stopped = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stopped.set())
            with contextlib.suppress(KeyboardInterrupt):
                stopped.wait()
        else:
            results = asyncio.run(demo(url, settings.served_model_name, a.agents, a.seed))
            import httpx

            headers = {"Authorization": f"Bearer {os.environ['AGENTRIVER_API_KEY']}"} \
                if os.environ.get("AGENTRIVER_API_KEY") else {}
            report(results, httpx.get(f"{url}/metrics", headers=headers, timeout=30).text)
            if river is not None:
                river_demo(url, river_root)
    finally:
        stop(settings)
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
