"""The agent routes: OpenAI-compatible chat completions in front of the GlobalScheduler and its engines.

A call asks the scheduler for an engine (queued in the cluster's policy order), streams the tokens from that engine
actor itself, and reports the segment's outcome, which starts the session's tool wait. If the engine dies mid-call,
the rest of the segment is recomputed on another engine and the client sees one answer. If the scheduler dies, Ray
restarts it and re-sends the calls (they are safe to repeat); a call it does not answer within
`SCHEDULER_DEADLINE_S` is answered 503 with Retry-After, and a segment already generated is still delivered (its
report reaches the scheduler when it is back). The methods run on the ingress replica
(`deployments.app.AgentIngress`), whose state they use; a session may be served by any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid

import ray
from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments import errors
from deployments import openai_api as oai
from deployments.chat import IncrementalText
from deployments.errors import ACTOR_LOST, ApiError, api_error
from runtime.engine.job_hints import SegmentOutcome
from runtime.engine.sampling import Sampling
from runtime.serving.dispatch import QueueFull, SegmentRequest, UnknownSession
from runtime.serving.metrics import merge_metrics
from runtime.serving.shards import merge_cluster_views

log = logging.getLogger("ray.serve")
# After the scheduler says its queue is full, this ingress refuses new calls itself for this long, before tokenising
# them or asking the scheduler, so refused calls take less of the CPU the engines need: at 4x the queue bound
# (bench.service_load, 256 clients, `small` on one engine, two runs each) 6.1-7.9 segments/s with it, 5.3-6.9
# without.
SHED_S = 0.25
# How long a call waits for a scheduler that does not answer before the client gets a 503. A restart takes ~2 s on
# an idle head; 24 s was measured on this 2-core machine with both engines generating (docs/ARCHITECTURE.md).
SCHEDULER_DEADLINE_S = 10.0
WAIT_POLL_S = 5.0  # a queued call asks the scheduler again this often, so a dead scheduler is noticed in a queue too
HEALTH_S = 5.0

router = APIRouter()


def fire_and_forget(call) -> None:
    """Send an actor call without waiting: it runs even when the caller's task is being cancelled."""
    with contextlib.suppress(Exception):
        call()


async def ask(ref, deadline_s: float = SCHEDULER_DEADLINE_S):
    """A scheduler call's answer, or a 503 once `deadline_s` passes (the call itself stays with Ray, which delivers
    it when the scheduler is back)."""
    try:
        return await asyncio.wait_for(ref, deadline_s)
    except TimeoutError:
        raise ApiError(503, f"the scheduler did not answer within {deadline_s:.0f} s (restarting); retry",
                       "server_error", headers={"Retry-After": "5"}) from None


class AgentRoutes:
    @router.get("/health")
    async def health(self) -> dict:
        """200 when this replica can reach every scheduler shard, each working."""
        await ask(asyncio.gather(*(s.ping.remote() for s in self.shards.schedulers)), HEALTH_S)
        return {"status": "ok"}

    @router.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.settings.served_model_name, "object": "model",
                                            "created": 0, "owned_by": "agentriver",
                                            "max_model_len": self.cluster["max_model_len"]}]}

    @router.get("/v1/cluster")
    async def cluster(self) -> dict:
        return merge_cluster_views(await ask(asyncio.gather(*(s.ready.remote() for s in self.shards.schedulers))))

    @router.get("/v1/sessions/{session_id}")
    async def session(self, session_id: str) -> dict:
        return await ask(self.shards.of(session_id).scheduler.session.remote(session_id))

    @router.post("/v1/sessions/{session_id}/close")
    async def close(self, session_id: str) -> dict:
        return await ask(self.shards.of(session_id).scheduler.close.remote(session_id))

    @router.get("/metrics")
    async def metrics(self) -> Response:
        text = merge_metrics(await ask(asyncio.gather(*(s.metrics_text.remote() for s in self.shards.schedulers))))
        return Response(text, media_type="text/plain; version=0.0.4")

    @router.post("/v1/chat/completions")
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
        shedding = self.shards.of(session).shedding  # this shard's queue was full a moment ago
        if shedding is not None and time.monotonic() < shedding[0]:
            full = shedding[1]
            raise ApiError(full.status, full.message, full.type, full.param, full.headers)
        if body.allowed_token_ids is not None and max(body.allowed_token_ids) >= self.tokenizer.vocab_size:
            raise ApiError(400, f"allowed_token_ids: {max(body.allowed_token_ids)} is not a token id of this model "
                                f"(its vocabulary has {self.tokenizer.vocab_size})", param="allowed_token_ids")
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
        ends = one_shot or body.vllm_xargs.last  # the job ends with this segment, and the session with it
        grant = await self._acquire(session, len(prompt), budget, body.tool(), body.vllm_xargs.kv_action, ends)
        segment = self._segment(grant, prompt, body.sampling(), ends, steps=body.stream)
        cid = oai.completion_id()
        if body.stream:
            return StreamingResponse(self._sse(segment, cid, body.model, session, len(prompt)),
                                     media_type="text/event-stream", headers={"X-Replica": self.replica})
        text = IncrementalText(self.tokenizer)
        finish, engine_s = "length", 0.0
        async for item in segment:
            if isinstance(item, SegmentOutcome):
                engine_s = item.service_s
            else:
                text.add(item["token_ids"])
                finish = item["finish_reason"] or finish
        timing = f"engine;dur={engine_s * 1e3:.1f}, total;dur={(time.monotonic() - started) * 1e3:.1f}"
        return JSONResponse(oai.completion(cid, body.model, text.text, finish, len(prompt), len(text.token_ids),
                                           "" if one_shot else session),
                            headers={"Server-Timing": timing, "X-Replica": self.replica})

    async def _acquire(self, session: str, prompt_tokens: int, budget: int, tool_category: str, kv_action: str,
                       last: bool):
        """Queue the segment and wait for its engine. A caller that goes away while waiting (client disconnect,
        error) gives its ticket back, so nothing is granted to nobody. The ticket is named here, so the scheduler
        can take a re-sent acquire for the one it already queued."""
        ticket = f"{session}/{uuid.uuid4().hex}"
        shard = self.shards.of(session)
        try:
            grant = await ask(shard.acquire.call(SegmentRequest(ticket, session, prompt_tokens, budget,
                                                                tool_category, kv_action, last)))
        except QueueFull as e:
            refusal = api_error(e)
            shard.shedding = (time.monotonic() + SHED_S, refusal)
            raise refusal from None
        except BaseException:
            fire_and_forget(lambda: shard.scheduler.cancel.remote(ticket))
            raise
        return grant if grant is not None else await self._wait(shard.scheduler, ticket)

    async def _wait(self, scheduler, ticket: str):
        try:
            while True:
                grant = await ask(scheduler.wait.remote(ticket, WAIT_POLL_S), WAIT_POLL_S + SCHEDULER_DEADLINE_S)
                if grant is not None:
                    return grant
        except BaseException:
            fire_and_forget(lambda: scheduler.cancel.remote(ticket))
            raise

    async def _segment(self, grant, prompt: list[int], sampling: Sampling, last: bool, steps: bool):
        """The segment's token chunks (each step's for a streaming client; else one, as every token that crosses
        from the engine actor is a Ray object), then its `SegmentOutcome`, from whichever engine ends up serving it
        (engine deaths are retried). Whatever ends it early - the client leaving, an error - cancels it on its
        engine and gives the ticket back, so the session's next call starts clean."""
        emitted: list[int] = []
        final: SegmentOutcome | None = None
        shard = self.shards.of(grant.session_id)
        try:
            while final is None:
                try:
                    engine = self._engine(grant.engine_name)
                    stream = engine.stream.remote(grant.ticket, prompt + emitted, grant.max_tokens, sampling,
                                                  grant.hint, steps)
                except ValueError:  # the engine actor is gone for good (not even restarting)
                    grant = await self._retry(shard.scheduler, grant, len(emitted))
                    continue
                try:
                    async for ref in stream:
                        item = await ref
                        if isinstance(item, SegmentOutcome):
                            final = item
                        else:
                            emitted += item["token_ids"]
                            yield item
                    if final is None:
                        raise RuntimeError(f"engine {grant.engine_name} ended a stream without its summary")
                except ACTOR_LOST:
                    grant = await self._retry(shard.scheduler, grant, len(emitted))
                except BaseException:
                    fire_and_forget(lambda s=stream: ray.cancel(s))  # the engine stops generating for nobody
                    raise
        except BaseException:
            fire_and_forget(lambda: shard.scheduler.cancel.remote(grant.ticket))
            raise
        outcome = dataclasses.replace(final, output_tokens=len(emitted))  # a retried segment's tokens, all engines
        # The answer is the client's whatever the scheduler does: a report it cannot take now it takes once back.
        # A job's last segment closes its session in the scheduler's `finish`; one given up before its report came
        # (a slow caller) is closed here.
        with contextlib.suppress(ApiError):
            if not await ask(shard.finish.call((grant.ticket, outcome))) and last:
                with contextlib.suppress(UnknownSession):  # reconciled away while its finish was on its way
                    await ask(shard.scheduler.close.remote(grant.session_id))
        yield outcome

    async def _retry(self, scheduler, grant, emitted_tokens: int):
        """Queue the rest of a segment whose engine died with `scheduler` (its session's shard), and wait for its
        new engine."""
        await ask(scheduler.retry.remote(grant.ticket, emitted_tokens, grant.engine))
        return await self._wait(scheduler, grant.ticket)

    async def _sse(self, segment, cid: str, model: str, session: str, prompt_tokens: int):
        """Server-sent events that always end with `[DONE]`: after the usage chunk, or after an error event when
        the segment failed once streaming had begun."""
        text = IncrementalText(self.tokenizer)
        yield oai.chunk(cid, model, {"role": "assistant", "content": ""}, None, session)
        finish = "length"
        try:
            async for item in segment:
                if isinstance(item, SegmentOutcome):
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

    def _engine(self, name: str):
        handle = self._engines.get(name)
        if handle is None:
            handle = self._engines[name] = ray.get_actor(name, namespace=self.settings.namespace)
        return handle

