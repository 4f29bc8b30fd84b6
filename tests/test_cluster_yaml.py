from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_own_schema():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any schema violation
    assert config["available_node_types"]["worker_gpu"]["max_workers"] >= 1
    assert any("[gpu]" in c for c in config["worker_setup_commands"])


def test_serve_config_passes_serves_schema_and_our_settings(tiny_model):
    from ray.serve.schema import ServeDeploySchema

    from runtime.serving.config import ServeSettings

    config = yaml.safe_load((ROOT / "deployments" / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # raises on any schema violation
    [app] = config["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    settings = ServeSettings(**{**app["args"], "model": str(tiny_model)})  # the cluster's model path is remote
    assert settings.engine_num_gpus == 1 and settings.engines >= 1
    # every resource the service asks for is one that cluster.yaml's nodes offer: engines on workers, the
    # scheduler and the ingress on the head
    nodes = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]
    assert set(settings.engine_resources) <= set(nodes["worker_gpu"]["resources"])
    assert set(settings.scheduler_resources) | set(settings.ingress_resources) <= set(nodes["head_cpu"]["resources"])


def test_cluster_yaml_starts_the_serve_app_on_the_head():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert any("serve deploy deployments/serve_config.yaml" in c for c in config["head_start_ray_commands"])
