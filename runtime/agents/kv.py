"""KV-cache model: block accounting on a GPU and a CPU tier, and the preserve / swap / discard decision.

The block pool mirrors vLLM's: blocks of a finished request stay in an LRU prefix cache and count as free, so a
later request of the same job may hit them until something else needs the space. "Discard" is therefore exactly
what vLLM does when a request ends, and a resumed job pays only for the blocks that were evicted meanwhile.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass


class KVAction(enum.Enum):
    PRESERVE = "preserve"
    SWAP = "swap"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class KVDecision:
    action: KVAction
    ttl_s: float | None = None  # PRESERVE only: discard automatically after this long (Continuum's pin)


@dataclass(frozen=True, slots=True)
class MemoryView:
    """What a KV decision may look at, read live from the engine (simulated or real)."""

    gpu_blocks: int
    gpu_used_blocks: int  # running + preserved + in flight (the LRU prefix cache counts as free)
    cpu_free_blocks: int
    block_size: int
    batch_tokens: int  # KV tokens of the running batch (C_batch / C_other)
    link_backlog_s: float  # time until the GPU<->CPU link is free

    @property
    def usage(self) -> float:
        return self.gpu_used_blocks / self.gpu_blocks if self.gpu_blocks else 1.0


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class BlockPool:
    """Blocks of one KV tier owned per job."""

    def __init__(self, num_blocks: int, block_size: int = 16):
        if num_blocks < 0 or block_size <= 0:
            raise ValueError(f"num_blocks must be >= 0 and block_size > 0, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.used = 0
        self.owned: dict[str, int] = {}

    @property
    def free(self) -> int:
        return self.num_blocks - self.used

    def allocate(self, job_id: str, n: int) -> bool:
        if n > self.free:
            return False
        self.used += n
        self.owned[job_id] = self.owned.get(job_id, 0) + n
        return True

    def free_job(self, job_id: str) -> int:
        n = self.owned.pop(job_id, 0)
        self.used -= n
        return n


class CpuBlockPool(BlockPool):
    """The CPU tier that swapped-out jobs occupy."""


class GpuBlockPool(BlockPool):
    """GPU blocks owned per job, plus an LRU cache of freed job prefixes (vLLM's prefix cache).

    Cached blocks count as free: allocating evicts them, least recently freed first."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        super().__init__(num_blocks, block_size)
        self._cached: OrderedDict[str, int] = OrderedDict()  # oldest first
        self.cached_blocks = 0

    def allocate(self, job_id: str, n: int) -> bool:
        if n > self.free:
            return False
        self._evict(n - (self.num_blocks - self.used - self.cached_blocks))
        return super().allocate(job_id, n)

    def release_to_cache(self, job_id: str, tokens: int) -> None:
        """Free a job's blocks; its full blocks (the first `tokens` // block_size) stay cached for reuse."""
        n = self.free_job(job_id)
        keep = min(n, tokens // self.block_size)
        self._drop_cached(job_id)
        if keep > 0:
            self._evict(keep - (self.num_blocks - self.used - self.cached_blocks))
            self._cached[job_id] = keep
            self.cached_blocks += keep

    def take_cached(self, job_id: str) -> int:
        """Claim a job's cached prefix blocks back (a prefix-cache hit); returns the number of blocks."""
        n = self._cached.pop(job_id, 0)
        self.cached_blocks -= n
        if n:
            self.used += n
            self.owned[job_id] = self.owned.get(job_id, 0) + n
        return n

    def _drop_cached(self, job_id: str) -> None:
        self.cached_blocks -= self._cached.pop(job_id, 0)

    def _evict(self, n: int) -> None:
        """Evict n cached blocks, least recently freed first, tail blocks of a prefix before its head."""
        while n > 0 and self._cached:
            job_id, have = next(iter(self._cached.items()))
            take = min(have, n)
            if take == have:
                del self._cached[job_id]
            else:
                self._cached[job_id] = have - take
            self.cached_blocks -= take
            n -= take


# --------------------------------------------------------------------------------------------- decisions

@dataclass(frozen=True, slots=True)
class Waste:
    """Memory-time wasted by each option (bytes x seconds): the quantity both papers minimise."""

    preserve: float
    discard: float
    swap: float

    def best(self, swap_ok: bool = True) -> KVAction:
        # Ties go to the least disruptive option: preserve, then swap, then discard (a later option must be
        # strictly less wasteful to win). Called for every idle job at every search for memory: no lists here.
        action, least = KVAction.PRESERVE, self.preserve
        if swap_ok and self.swap < least:
            action, least = KVAction.SWAP, self.swap
        return KVAction.DISCARD if self.discard < least else action


def astraea_waste(t_api: float, c_self: int, c_batch: int, t_recompute: float, t_swap: float,
                  bytes_per_token: int) -> Waste:
    """Astraea §4.4: W_preserve = T_api*C_self*M, W_discard = T_rec*C_batch*M, W_swap = 2*T_swap*C_batch*M."""
    m = bytes_per_token
    return Waste(preserve=t_api * c_self * m, discard=t_recompute * c_batch * m, swap=2 * t_swap * c_batch * m)


def infercept_waste(t_int: float, c_self: int, c_other: int, t_fwd: float, t_swap: float,
                    bytes_per_token: int) -> Waste:
    """InferCept: discard also wastes the job's own memory while it is recomputed."""
    m = bytes_per_token
    return Waste(preserve=t_int * c_self * m, discard=t_fwd * c_self * m + t_fwd * c_other * m,
                 swap=2 * t_swap * c_other * m)


@dataclass(frozen=True)
class WatermarkKVManager:
    """Astraea's adaptive KV manager: preserve below the high watermark, else the least wasteful option."""

    high_watermark: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.high_watermark <= 1.0:
            raise ValueError(f"high_watermark must be in (0, 1], got {self.high_watermark}")

    def decide(self, view: MemoryView, *, t_api: float, c_self: int, t_recompute: float, t_swap: float,
               bytes_per_token: int) -> KVAction:
        if view.usage < self.high_watermark:
            return KVAction.PRESERVE
        waste = astraea_waste(t_api, c_self, view.batch_tokens, t_recompute, t_swap, bytes_per_token)
        return waste.best(swap_ok=view.cpu_free_blocks >= blocks_for(c_self, view.block_size))
