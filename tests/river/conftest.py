import uuid

import pytest


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
