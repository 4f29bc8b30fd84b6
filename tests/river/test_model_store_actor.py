"""River's ModelStore actor on a local Ray: the gate's checks and fine-tunes as Ray tasks off the segment's path,
no duplicate training of the same content, and a killed actor that Ray restarts serves every model it had (the
store is files)."""

import hashlib
import time

import ray

from actors.model_store import STORE_NAME, ModelStoreActor
from runtime.river.sr import SRConfig
from runtime.river.train import TrainConfig, generic_model


def test_store_actor_trains_once_per_content_and_survives_a_restart(pairs, tmp_path):
    sr = SRConfig(blocks=1, channels=4, scale=2)
    generic_model(lambda: [(p.lr[:2], p.hr[:2]) for p in pairs[:1]], {"test": 1}, sr, TrainConfig(steps=2, batch=2),
                  tmp_path / "generic", progress=False)
    generic = str(next((tmp_path / "generic").glob("generic-*.safetensors")))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        store = ModelStoreActor.options(name=STORE_NAME).remote(
            str(tmp_path / "store"), generic, max_finetunes=1, gate={"target_gain_db": 50.0},  # every segment misses
            finetune={"steps": 5, "batch": 4})
        seg = pairs[0]
        first = ray.get(store.process.remote("s1", "freedoom2", seg.segment_id, seg.lr, seg.hr))
        again = ray.get(store.process.remote("s2", "freedoom2", seg.segment_id, seg.lr, seg.hr))
        assert first["gate"] == again["gate"] == "no_model"  # an empty store: a miss with nothing to check
        assert first["finetune_scheduled"] and not again["finetune_scheduled"]  # same content already training
        new = ray.get(store.collect.remote(True))  # trained (a Ray task), scored (the gate's worker), stored
        assert new == [1] and ray.get(store.ids.remote()) == [1]
        stats = ray.get(store.stats.remote())
        assert stats["finetunes"]["done"] == 1 and stats["gate"]["in_flight"] == 0
        data, etag = ray.get(store.weights.remote(1))
        assert hashlib.sha256(data).hexdigest() == etag

        ray.kill(store, no_restart=False)  # the process dies; Ray restarts it from its constructor arguments
        deadline = time.monotonic() + 120
        while True:
            try:
                ids = ray.get(store.ids.remote(), timeout=30)
                break
            except ray.exceptions.RayActorError:
                assert time.monotonic() < deadline, "the store actor did not come back"
                time.sleep(1)
        assert ids == [1]
        assert ray.get(store.weights.remote(1)) == (data, etag)
        reuse = ray.get(store.process.remote("s1", "freedoom2", seg.segment_id, seg.lr, seg.hr))
        assert reuse["voted_id"] == 1 and reuse["gate"] == "queued"  # the reloaded index finds the model; checked
        ray.get(store.collect.remote(True))
        assert ray.get(store.stats.remote())["gate"]["checks"] == 1
        assert ray.get_actor(STORE_NAME) is not None
    finally:
        ray.shutdown()
