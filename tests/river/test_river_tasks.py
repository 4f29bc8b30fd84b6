"""Fine-tunes as Ray tasks on a local Ray (the same code path a cluster runs)."""

import pytest
import ray

from actors.river_tasks import RayTrainer, submit_finetune
from runtime.river.sr import EDSR, SRConfig
from runtime.river.train import TrainConfig

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)


def test_two_finetunes_run_as_ray_tasks(pairs):
    sr = SRConfig(blocks=1, channels=4, scale=2)
    base = EDSR(sr).state_dict()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        refs = [submit_finetune(base, sr, [(p.lr[:2], p.hr[:2])], TrainConfig(steps=3, batch=2)) for p in pairs[:2]]
        results = ray.get(refs, timeout=300)
    finally:
        ray.shutdown()
    assert [r.steps for r in results] == [3, 3]
    assert all(set(r.state) == set(base) for r in results)


def test_ray_trainer_runs_at_most_max_running_and_finishes_all(pairs):
    sr = SRConfig(blocks=1, channels=4, scale=2)
    base = EDSR(sr).state_dict()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        trainer = RayTrainer(max_running=1)
        futures = [trainer.submit(base, sr, [(p.lr[:2], p.hr[:2])], TrainConfig(steps=3, batch=2)) for p in pairs[:3]]
        assert trainer.counts()["running"] == 1 and trainer.counts()["queued"] == 2
        results = [f.result(timeout=300) for f in futures]
    finally:
        ray.shutdown()
    assert [r.steps for r in results] == [3, 3, 3]
    assert trainer.counts() == {"queued": 0, "running": 0, "done": 3, "failed": 0}
