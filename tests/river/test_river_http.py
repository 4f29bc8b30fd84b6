"""River's endpoints in the Serve app on a local Ray: real ViZDoom segments as real H.264 uploads, the store actor,
fine-tunes as Ray tasks, weights with ETags, prefetch, enhance, and every bad upload refused with a 4xx."""

import asyncio
import hashlib
import io
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from deployments.app import AgentIngress  # noqa: E402
from runtime.river.degrade import encode  # noqa: E402
from runtime.river.sr import SRConfig  # noqa: E402
from runtime.river.train import TrainConfig, generic_model  # noqa: E402
from runtime.serving.config import ServeSettings  # noqa: E402


def png(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def river(tiny_model, pairs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("river-http")
    generic_model(lambda: [(p.lr[:2], p.hr[:2]) for p in pairs[:1]], {"test": "http"}, SRConfig(blocks=1, channels=4),
                  TrainConfig(steps=2, batch=2), tmp / "generic", progress=False)
    h, w = pairs[0].lr.shape[1:3]
    settings = ServeSettings(model=str(tiny_model), engine={"max_model_len": 512, "host_swap_blocks": 0},
                             river={"generic": str(next((tmp / "generic").glob("generic-*.safetensors"))),
                                    "store_dir": str(tmp / "store"), "max_finetunes": 1, "target_gain_db": 50.0,
                                    "finetune_steps": 5, "width": w, "height": h, "max_upload_mb": 2.0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(AgentIngress.options(ray_actor_options={"num_cpus": 0}).bind(settings.model_dump()),
              name="agentriver", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def upload(pair, session: str, frames=(0, 4), video=None, video_type="video/mp4", gt=None, gt_frames=None):
    files = [("video", ("seg.mp4", video if video is not None else encode(pair.lr, 8.75, crf=28), video_type))]
    for i, f in enumerate(gt if gt is not None else [pair.hr[k] for k in frames]):
        files.append(("ground_truth", (f"gt{i}.png", png(f), "image/png")))
    data = {"session": session, "game": "freedoom2", "segment_id": pair.segment_id,
            "gt_frames": gt_frames if gt_frames is not None else ",".join(map(str, frames))}
    return {"data": data, "files": files}


def test_post_lookup_fetch_with_etag_prefetch_and_enhance(river, pairs):
    first = httpx.post(f"{river}/river/v1/segments", timeout=120, **upload(pairs[0], "s1"))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["model_id"] == 0 and body["finetune_scheduled"] and body["frames"] == len(pairs[0].lr)
    deadline = time.monotonic() + 180
    while httpx.get(f"{river}/river/v1/stats", timeout=30).json()["finetunes"]["done"] < 1:
        assert time.monotonic() < deadline, "the fine-tune did not finish"
        time.sleep(1)
    again = httpx.post(f"{river}/river/v1/segments", timeout=120, **upload(pairs[0], "s1")).json()
    assert again["voted_id"] == 1  # the fine-tuned model joined the store and the lookup finds it
    model = httpx.get(f"{river}/river/v1/models/1", timeout=30)
    assert model.status_code == 200 and model.headers["etag"] == f'"{hashlib.sha256(model.content).hexdigest()}"'
    cached = httpx.get(f"{river}/river/v1/models/1", headers={"If-None-Match": model.headers["etag"]}, timeout=30)
    assert cached.status_code == 304 and not cached.content
    generic = httpx.get(f"{river}/river/v1/models/0", timeout=30)
    assert generic.status_code == 200 and "blocks" in generic.headers["x-sr-config"]
    prefetch = httpx.get(f"{river}/river/v1/prefetch", params={"session": "s1", "k": 2}, timeout=30)
    assert prefetch.status_code == 200 and len(prefetch.json()["models"]) <= 2
    lr = pairs[0].lr[0]
    sr = httpx.post(f"{river}/river/v1/enhance", data={"model_id": "1"},
                    files=[("frames", ("f.png", png(lr), "image/png"))], timeout=60)
    assert sr.status_code == 200 and sr.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(sr.content)))
    assert out.shape == (lr.shape[0] * 2, lr.shape[1] * 2, 3)
    stats = httpx.get(f"{river}/river/v1/stats", timeout=30).json()
    # the gate's target (50 dB) is out of reach, so the second post scheduled another fine-tune of that content
    assert stats["models"] >= 1 and stats["finetunes"]["done"] >= 1 and stats["lookups"]["hit"] >= 1


def test_concurrent_posts_from_8_sessions(river, pairs):
    async def go():
        async with httpx.AsyncClient(base_url=river, timeout=300) as c:
            return await asyncio.gather(*(c.post("/river/v1/segments", **upload(pairs[i % len(pairs)], f"c{i}"))
                                          for i in range(8)))

    answers = asyncio.run(go())
    assert [a.status_code for a in answers] == [200] * 8
    assert httpx.get(f"{river}/river/v1/prefetch", params={"session": "c3"}, timeout=30).status_code == 200


def test_every_bad_upload_gets_a_4xx_naming_the_problem(river, pairs):
    p = pairs[1]
    before = httpx.get(f"{river}/river/v1/stats", timeout=30).json()["models"]
    small = p.hr[0][::2, ::2]
    cases = [
        (upload(p, "../etc"), "session"),
        (upload(p, "b1", video=b"not a video at all"), "video"),
        (upload(p, "b1", video_type="text/plain"), "video"),
        (upload(p, "b1", video=encode(p.hr[:4], 8.75, crf=28)), "video"),  # the 720p stream: wrong resolution
        (upload(p, "b1", gt=[small], gt_frames="0"), "ground_truth[0]"),
        (upload(p, "b1", gt_frames="0,1,2"), "gt_frames"),
        (upload(p, "b1", gt_frames="0,99"), "gt_frames"),
        (upload(p, "b1", gt_frames="a,b"), "gt_frames"),
    ]
    for kwargs, param in cases:
        r = httpx.post(f"{river}/river/v1/segments", timeout=120, **kwargs)
        assert r.status_code == 400, (param, r.text)
        assert r.json()["error"]["param"] == param, r.text
    huge = httpx.post(f"{river}/river/v1/segments", timeout=120, **upload(p, "b1", video=bytes(3 * 2**20)))
    assert huge.status_code == 413 and huge.json()["error"]["param"] == "body"
    missing = httpx.post(f"{river}/river/v1/segments", data={"session": "x"}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["param"]
    for path, status in (("/river/v1/models/999", 404), ("/river/v1/models/-1", 400), ("/river/v1/models/abc", 400),
                         ("/river/v1/models/..%2F..%2Fetc", 400), ("/river/v1/prefetch?session=never", 404),
                         ("/river/v1/prefetch?session=s1&k=0", 400)):
        r = httpx.get(river + path, timeout=30)
        assert r.status_code in (status, 404) and "error" in r.json(), (path, r.text)
    many = [("frames", (f"f{i}.png", png(p.lr[0]), "image/png")) for i in range(9)]
    assert httpx.post(f"{river}/river/v1/enhance", files=many, timeout=60).status_code == 400
    wrong = [("frames", ("f.png", png(p.hr[0]), "image/png"))]
    r = httpx.post(f"{river}/river/v1/enhance", files=wrong, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "frames[0]"
    assert httpx.get(f"{river}/river/v1/stats", timeout=30).json()["models"] == before  # nothing half-written
