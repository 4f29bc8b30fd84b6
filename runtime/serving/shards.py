"""The scheduler split by session: which shard owns a session, and which engines each shard plans for.

Why: one GlobalScheduler actor is one Python event loop, and every segment costs it two calls (acquire, finish),
so a fleet's segment rate is capped by one core however many the head has (bench.control_plane). With
`scheduler_shards` = N, N scheduler actors each own the sessions whose id hashes to them and the engines
`shard, shard + N, ...`: a session's whole life (its queue entry, history, KV location, checkpoint) stays on one
shard, so no call ever needs two of them, and a shard's restart touches only its own sessions. What is given up:
a shard's global queue and KV moves span its own engines, not the whole fleet (with 1,000 engines and 4 shards,
250 each, still far more than the per-engine arrangement the global queue is measured against).

The hash is CRC-32 of the session id, not Python's `hash` (randomised per process): every ingress replica, every
restart and the benchmark must agree on it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from runtime.serving.coalesce import Coalescer


def shard_of(session_id: str, shards: int) -> int:
    return zlib.crc32(session_id.encode()) % shards


def shard_engines(engines: int, shards: int, shard: int) -> range:
    """The fleet indices of the engines `shard` plans for (every shard gets at least one: shards <= engines)."""
    if not 0 <= shard < shards <= engines:
        raise ValueError(f"scheduler_shards: {shards} shards need as many engines or more (got {engines}), and "
                         f"shard {shard} must be one of them")
    return range(shard, engines, shards)


@dataclass
class ShardCalls:
    """One shard's scheduler handle and this process's coalesced segment calls to it (runtime.serving.coalesce)."""

    scheduler: Any
    acquire: Coalescer
    finish: Coalescer
    # (until, the refusal) after this shard said its queue was full: the ingress refuses the shard's new calls
    # itself until then (deployments.agent_routes.SHED_S), and only this shard's
    shedding: tuple[float, Any] | None = None


class ShardRouter:
    """Sends each session's calls to the shard that owns it. `coalesce` False sends each call alone (the transport
    the benchmark measures coalescing against)."""

    def __init__(self, schedulers: list, coalesce: bool = True):
        many = {} if coalesce else {"max_batch": 1, "max_in_flight": 1 << 20}
        # reports always arrive: a finish is sent even when its caller stopped waiting
        self.shards = [ShardCalls(s, Coalescer(s.acquire.remote, **many),
                                  Coalescer(s.finish.remote, drop_abandoned=False, **many)) for s in schedulers]

    def of(self, session_id: str) -> ShardCalls:
        return self.shards[shard_of(session_id, len(self.shards))]

    @property
    def schedulers(self) -> list:
        return [s.scheduler for s in self.shards]

    def sent(self) -> tuple[int, int]:
        """Remote calls made and the calls they carried, over every shard and kind."""
        coalescers = [c for s in self.shards for c in (s.acquire, s.finish)]
        return sum(c.batches for c in coalescers), sum(c.calls for c in coalescers)


def merge_cluster_views(views: list[dict]) -> dict:
    """One `describe` of the cluster from each shard's (`actors.global_scheduler.GlobalScheduler.describe`): the
    engines in fleet order, queues and sessions summed."""
    engines = sorted((e for v in views for e in v["engines"]), key=lambda e: e["index"])
    return {**views[0], "engines": engines, "ready": sum(v["ready"] for v in views),
            "sessions": sum(v["sessions"] for v in views), "shards": len(views)}
