"""River fine-tunes as Ray tasks: `runtime.river.train.finetune` on whatever node has room (a GPU when the
cluster has one). The library function has no Ray import; this is the only place that knows about Ray."""

from __future__ import annotations

import ray
import torch

from runtime.river.sr import SRConfig
from runtime.river.train import Pairs, TrainConfig, TrainResult, finetune


@ray.remote
def _finetune_task(base: dict[str, torch.Tensor], sr: SRConfig, pairs: Pairs, cfg: TrainConfig) -> TrainResult:
    return finetune(base, sr, pairs, cfg, device="cuda" if torch.cuda.is_available() else "cpu")


def submit_finetune(base: dict[str, torch.Tensor], sr: SRConfig, pairs: Pairs, cfg: TrainConfig,
                    num_cpus: float = 1, num_gpus: float | None = None) -> ray.ObjectRef:
    """Start a fine-tune on the cluster; `num_gpus` defaults to 1 when the cluster has GPUs, else 0."""
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return _finetune_task.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(base, sr, pairs, cfg)
