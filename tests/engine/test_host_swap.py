"""The host-swap connector's scheduler side on vLLM's own config and `Request` objects: which request may take a
job's host copy back. (The copies themselves run in the real server: tests/engine/test_drop_in.py.)"""

import pytest
from vllm import SamplingParams
from vllm.config import CacheConfig, KVTransferConfig, VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.v1.request import Request

from runtime.engine.host_swap import CONNECTOR_NAME, MODULE_PATH, HostSwapConnector

BLOCK = 16


@pytest.fixture(scope="module")
def connector():
    config = VllmConfig(cache_config=CacheConfig(block_size=BLOCK), kv_transfer_config=KVTransferConfig(
        kv_connector=CONNECTOR_NAME, kv_connector_module_path=MODULE_PATH, kv_role="kv_both",
        kv_connector_extra_config={"host_blocks": 64}))
    return HostSwapConnector(config, KVConnectorRole.SCHEDULER)


def request(request_id: str, tokens: list[int], session_id: str | None) -> Request:
    return Request(request_id, tokens, SamplingParams(max_tokens=4), None, session_id=session_id)


def test_only_the_segment_the_plugin_names_takes_the_session_host_copy(connector):
    """A session's concurrent call is a plain request to the plugin (its previous call still ran): it must not
    consume the copy that the session's next segment will look for, even though it carries the same session id
    and starts with the same tokens."""
    swapped = request("seg-1", list(range(100)), "s")
    swapped.num_computed_tokens = 100
    connector.swap_out("seg-1", "s")
    assert connector.request_finished(swapped, list(range(7))) == (True, None)
    assert connector.holds("s") and connector.free_host_blocks == 64 - 100 // BLOCK

    concurrent = request("plain", list(range(120)), "s")
    assert connector.get_num_new_matched_tokens(concurrent, 0) == (0, False)

    connector.expect("seg-2", "s")
    resumed = request("seg-2", list(range(120)), "s")
    assert connector.get_num_new_matched_tokens(resumed, 0) == (96, False)  # whole blocks only
    assert connector.get_num_new_matched_tokens(resumed, 96) == (0, False)  # all of it already cached
