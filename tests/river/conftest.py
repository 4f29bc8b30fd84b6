import uuid

import pytest

from runtime.river.dataset import build_dataset, load_pairs
from runtime.river.gameplay import GameplayConfig

# Two maps, two 1-second segments each at 8.75 fps (9 frames): real ViZDoom frames, real x264, small enough for CI.
SMALL = GameplayConfig(wad="freedoom2", maps=("MAP01", "MAP02"), segments_per_map=2, segment_s=1.0, fps=8.75, seed=1)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return build_dataset(SMALL, scale=2, crf=28, root=tmp_path_factory.mktemp("river"), progress=False)


@pytest.fixture(scope="session")
def pairs(dataset):
    return load_pairs(dataset)


@pytest.fixture(scope="session")
def dataset_x4(dataset):
    """The same recording streamed at x4 (recorded once)."""
    return build_dataset(SMALL, scale=4, crf=28, root=dataset.parents[1], progress=False)


@pytest.fixture(scope="session")
def pairs_x4(dataset_x4):
    return load_pairs(dataset_x4)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto in server mode: HTTP, its own in-memory buckets), for stores on shared
    storage. Yields `host:port`."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def s3_store_uri(s3_endpoint) -> str:
    """A store URI in a new bucket of its own on the S3 server; the credentials ride in the URI so Ray's worker
    processes have them too (a real deployment takes them from the environment)."""
    return (f"s3://testing:testing@river-{uuid.uuid4().hex[:12]}/store?endpoint_override={s3_endpoint}"
            "&scheme=http&region=us-east-1&allow_bucket_creation=true")
