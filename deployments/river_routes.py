"""River's routes: a game server's segments in, SR models and enhanced frames out, over the model store actor.

The methods run on the ingress replica (`deployments.app.AgentIngress`), whose state they use (`self.river`, the
store actor, is None when River is not configured).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from safetensors.torch import load as load_safetensors

from deployments import errors, river_api
from deployments.errors import ApiError, api_error
from runtime.river.sr import SRConfig, upscale
from runtime.river.store import CorruptModelError
from runtime.river.train import model_from_state

SR_MODEL_CACHE = 8  # SR models the ingress keeps loaded for /river/v1/enhance

router = APIRouter(prefix="/river/v1")


@contextlib.contextmanager
def river_errors():
    """A ValueError from decoding or the store names its field first: a 400 with that field as `param`."""
    try:
        yield
    except ValueError as e:
        raise api_error(e) from e


class RiverRoutes:
    def _store(self):
        if self.river is None:
            raise ApiError(404, "River is not configured on this service (ServeSettings.river)")
        return self.river

    @router.post("/segments")
    async def river_segment(self, session: Annotated[str, Form()], game: Annotated[str, Form()],
                            segment_id: Annotated[str, Form()], gt_frames: Annotated[str, Form()],
                            video: Annotated[UploadFile, File()],
                            ground_truth: Annotated[list[UploadFile], File()]) -> dict:
        """A game server's segment: the low-res H.264 stream and a few ground-truth PNG frames (`gt_frames`:
        their frame numbers). Answers the model to use now (from the lookup; the quality gate checks the segment
        afterwards) and the time the service spent: `decode_ms` (upload read and decoded here), `server_ms` (all)."""
        t0 = time.perf_counter()
        store = self._store()
        r = self.settings.river
        with river_errors():
            for field, value in (("session", session), ("game", game), ("segment_id", segment_id)):
                river_api.check_id(field, value)
            numbers = river_api.frame_numbers(gt_frames, len(ground_truth))
            lr = await asyncio.to_thread(river_api.decode_video, await video.read(), video.content_type, r.width,
                                         r.height, r.max_segment_frames)
            if any(not 0 <= n < len(lr) for n in numbers):
                raise ValueError(f"gt_frames: frame numbers must be in 0..{len(lr) - 1}, got {numbers}")
            hr = await self._pngs(ground_truth, "ground_truth", *river_api.hr_size(r.width, r.height, self.river_scale))
            decoded = time.perf_counter()
            decision = await store.process.remote(session, game, segment_id, lr, hr, numbers)
        return {**decision, "frames": len(lr), "decode_ms": (decoded - t0) * 1e3,
                "server_ms": (time.perf_counter() - t0) * 1e3}

    async def _pngs(self, files: list[UploadFile], field: str, width: int, height: int) -> np.ndarray:
        frames = [await asyncio.to_thread(river_api.decode_png, await f.read(), f.content_type, f"{field}[{i}]",
                                          width, height) for i, f in enumerate(files)]
        return np.stack(frames)

    @router.get("/models/{model_id}")
    async def river_model(self, model_id: int, request: Request) -> Response:
        store = self._store()
        if model_id < 0:
            raise ApiError(400, "model_id: must be >= 0", param="model_id")
        try:
            data, checksum = await store.weights.remote(model_id)
            sr = await store.sr_config.remote(model_id)
        except KeyError as e:
            raise ApiError(404, f"model_id: no model {model_id}", param="model_id") from e
        except CorruptModelError as e:
            raise ApiError(503, f"model_id: model {model_id} is unavailable ({errors.original(e)})",
                           "server_error") from e
        etag = f'"{checksum}"'
        headers = {"ETag": etag, "X-SR-Config": json.dumps(sr)}
        if river_api.etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="application/octet-stream", headers=headers)

    @router.get("/prefetch")
    async def river_prefetch(self, session: str, k: Annotated[int, Query(ge=1, le=32)] = 3,
                             game: str | None = None) -> dict:
        """The models `session` should fetch next; a session that has not played yet, with its `game`, gets the
        game's most used models (what its first segment will most likely need)."""
        store = self._store()
        with river_errors():
            river_api.check_id("session", session)
            if game is not None:
                river_api.check_id("game", game)
        if await store.knows.remote(session):
            return {"session": session, "models": (await store.next_models.remote(session))[:k]}
        if game is not None:
            return {"session": session, "models": (await store.popular.remote(game))[:k]}
        raise ApiError(404, f"session: no segment of session {session!r} was seen (pass game= for a new session)",
                       param="session")

    @router.post("/enhance")
    async def river_enhance(self, frames: Annotated[list[UploadFile], File()],
                            model_id: Annotated[int, Form()] = 0) -> Response:
        """Low-res PNG frame(s) in, SR frame(s) out at the service's scale factor: one frame as image/png, several
        as base64 PNGs in JSON."""
        self._store()
        r = self.settings.river
        if model_id < 0:
            raise ApiError(400, "model_id: must be >= 0", param="model_id")
        if len(frames) > r.max_enhance_frames:
            raise ApiError(400, f"frames: at most {r.max_enhance_frames} per call, got {len(frames)}", param="frames")
        with river_errors():
            lr = await self._pngs(frames, "frames", r.width, r.height)
        model = await self._sr_model(model_id)
        pngs = await asyncio.to_thread(lambda: [river_api.encode_png(f) for f in upscale(model, lr)])
        if len(pngs) == 1:
            return Response(pngs[0], media_type="image/png")
        return JSONResponse({"frames": [base64.b64encode(p).decode() for p in pngs]})

    @router.get("/stats")
    async def river_stats(self) -> dict:
        return await self._store().stats.remote()

    async def _sr_model(self, model_id: int):
        model = self._sr_models.get(model_id)
        if model is None:
            try:
                data, _ = await self.river.weights.remote(model_id)
                sr = await self.river.sr_config.remote(model_id)
            except KeyError as e:
                raise ApiError(404, f"model_id: no model {model_id}", param="model_id") from e
            except CorruptModelError as e:
                raise ApiError(503, f"model_id: model {model_id} is unavailable ({errors.original(e)})",
                               "server_error") from e
            model = self._sr_models[model_id] = model_from_state(load_safetensors(data), SRConfig(**sr))
            if len(self._sr_models) > SR_MODEL_CACHE:
                self._sr_models.popitem(last=False)
        self._sr_models.move_to_end(model_id)
        return model
