"""The served app on a local Ray, for test modules that drive it over HTTP (one per module: starting Ray, Serve and
the vLLM engines takes about a minute)."""

import contextlib

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from actors.global_scheduler import shutdown_schedulers
from bench.stock_server import free_port
from deployments.app import AgentIngress, ingress_actor_options
from runtime.serving.config import ServeSettings


def deploy(settings: dict, env: dict | None = None, replicas: int = 1) -> None:
    """(Re)deploy the ingress with `settings` (ServeSettings fields; its replicas placed as `ingress_resources`
    says), `env` set in its `replicas` replicas."""
    options = ingress_actor_options(ServeSettings(**settings), env)
    serve.run(AgentIngress.options(ray_actor_options=options, num_replicas=replicas).bind(settings),
              name="agentriver", route_prefix="/")


@contextlib.contextmanager
def local_service(settings: dict, address: str | None = None):
    """Yields the service's base URL; shuts down the scheduler (and its engines), Serve and Ray afterwards. Ray is
    started here, or joined at `address` (a multi-node cluster the caller started; Serve's proxy on its head)."""
    port = free_port()
    ray.init(address=address, include_dashboard=None if address else False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        deploy(settings)
        yield f"http://127.0.0.1:{port}"
    finally:
        shutdown_schedulers(ServeSettings(**settings))
        serve.shutdown()
        ray.shutdown()


def metric(url: str, name: str) -> float:
    """A sample of the service's /metrics (e.g. `..._total`, `..._count`), summed over its labels."""
    families = text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text)
    return sum(s.value for family in families for s in family.samples if s.name == name)
