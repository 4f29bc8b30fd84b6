"""River's ModelStore actor on a real multi-node Ray cluster on this machine: the gate's checks and fine-tunes as
Ray tasks off the segment's path, no duplicate training of the same content; the node holding the actor removed,
Ray restarts it on another node and it serves every model it had from shared storage (a bucket on a real
S3-compatible server) with the same checksums; an object damaged in the bucket is reported and skipped."""

import hashlib
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from actors.model_store import STORE_NAME, ModelStoreActor
from runtime.river.sr import SRConfig
from runtime.river.store import open_uri
from runtime.river.train import TrainConfig, generic_model

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)


def test_store_actor_trains_once_per_content_and_survives_a_restart(pairs, tmp_path, s3_store_uri):
    sr = SRConfig(blocks=1, channels=4, scale=2)
    generic_model(lambda: [(p.lr[:2], p.hr[:2]) for p in pairs[:1]], {"test": 1}, sr, TrainConfig(steps=2, batch=2),
                  tmp_path / "generic", progress=False)
    generic = str(next((tmp_path / "generic").glob("generic-*.safetensors")))
    # the head runs the driver and the fine-tune tasks; the store actor goes where "river_store" is: one node now
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    first_node = cluster.add_node(num_cpus=0, resources={"river_store": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        store = ModelStoreActor.options(name=STORE_NAME, resources={"river_store": 1}).remote(
            s3_store_uri, generic, max_finetunes=1, gate={"target_gain_db": 50.0},  # every segment misses
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
        assert stats["node"] == first_node.node_id
        data, etag = ray.get(store.weights.remote(1))
        assert hashlib.sha256(data).hexdigest() == etag

        second_node = cluster.add_node(num_cpus=0, resources={"river_store": 1})
        cluster.remove_node(first_node)  # the node dies with the actor; Ray restarts it where it can run
        _restarted(store, lambda stats: stats["node"] == second_node.node_id)
        assert ray.get(store.ids.remote()) == [1]
        assert ray.get(store.weights.remote(1)) == (data, etag)  # the same bytes, the same checksum
        reuse = ray.get(store.process.remote("s1", "freedoom2", seg.segment_id, seg.lr, seg.hr))
        assert reuse["voted_id"] == 1 and reuse["gate"] == "queued"  # the reloaded index finds the model; checked
        ray.get(store.collect.remote(True))
        assert ray.get(store.stats.remote())["gate"]["checks"] == 1
        assert ray.get_actor(STORE_NAME) is not None

        fs, base = open_uri(s3_store_uri)
        with fs.open_output_stream(f"{base}/weights/1.safetensors") as f:
            f.write(b"damaged in the bucket")
        ray.kill(store, no_restart=False)  # the process dies; Ray restarts it from its constructor arguments
        _restarted(store, lambda stats: stats["problems"] == {1: "checksum mismatch"})  # reported on reload
        assert ray.get(store.ids.remote()) == []  # and not served
        skipped = ray.get(store.process.remote("s1", "freedoom2", seg.segment_id, seg.lr, seg.hr))
        assert skipped["gate"] == "no_model" and skipped["model_id"] == 0
    finally:
        ray.shutdown()
        cluster.shutdown()


def _restarted(store, done) -> None:
    """Waits until the actor answers with stats for which `done` holds: the restarted process, not the old one
    (a kill is asynchronous, so the old process may still answer the first calls). Calls made meanwhile wait for
    the restart (the actor retries its tasks), so a call may time out as well as fail."""
    deadline = time.monotonic() + 180
    while True:
        try:
            if done(ray.get(store.stats.remote(), timeout=30)):
                return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.monotonic() < deadline, "the store actor did not come back"
        time.sleep(1)
