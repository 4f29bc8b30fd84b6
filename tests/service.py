"""The served app on a local Ray, for tests that drive it over HTTP: one shared by every test that can use it (the
`shared_service` fixture), and one per module for those that need a topology of their own (scheduler shards, a
multi-node cluster). Starting Ray, Serve and the vLLM engines takes about a minute on 2 cores."""

import contextlib
from pathlib import Path

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from actors.global_scheduler import shutdown_schedulers
from bench.stock_server import free_port
from deployments.app import AgentIngress, ingress_actor_options
from runtime.river.sr import SRConfig
from runtime.river.train import TrainConfig, generic_model
from runtime.serving.config import ServeSettings

# Longer than any pause between one session's calls in the tests: a killed scheduler's new process has taken 24 s to
# answer on 2 cores (docs/ARCHITECTURE.md), and its sessions must outlive that; test_soak waits this long once for
# the sessions it leaves to expire.
SESSION_IDLE_S = 60.0


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


def shared_settings(model: Path, pairs: list, root: Path) -> dict:
    """The shared service: two engines serving `model` (each taking half a Ray CPU, so River's fine-tunes get one),
    plentiful KV, and River streaming `pairs` (x4) with a generic model of a few steps. River's gate aims at 50 dB,
    out of reach, so every segment it checks schedules a fine-tune; uploads are capped at 2 MB."""
    generic_model(lambda: [(p.lr[:2], p.hr[:2]) for p in pairs[:1]], {"test": "http"},
                  SRConfig(blocks=1, channels=4, scale=4), TrainConfig(steps=2, batch=2), root / "generic",
                  progress=False)
    h, w = pairs[0].lr.shape[1:3]
    return ServeSettings(model=str(model), engines=2, engine_num_cpus=0.5, session_idle_s=SESSION_IDLE_S,
                         engine={"max_model_len": 1024, "max_num_seqs": 16, "host_swap_blocks": 64},
                         river={"generic": str(next((root / "generic").glob("generic-*.safetensors"))),
                                "store_uri": str(root / "store"), "max_finetunes": 1, "target_gain_db": 50.0,
                                "finetune_steps": 80, "width": w, "height": h, "max_upload_mb": 2.0}).model_dump()


def metric(url: str, name: str) -> float:
    """A sample of the service's /metrics (e.g. `..._total`, `..._count`), summed over its labels."""
    families = text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text)
    return sum(s.value for family in families for s in family.samples if s.name == name)
