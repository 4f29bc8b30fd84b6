from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_own_schema():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any schema violation
    assert config["available_node_types"]["worker_gpu"]["max_workers"] >= 1
    assert any("[gpu]" in c for c in config["worker_setup_commands"])
