"""`SchedulerJournal`: the GlobalScheduler's checkpoint, kept in Ray's internal key-value store.

Why there: it lives in the GCS, which outlives any actor or worker node (and, with GCS fault tolerance backed by
Redis, the head node too), it needs no service or path besides the cluster itself, and a restarted actor reads it
on whichever node Ray puts it. What is kept: one entry per open session (`runtime.serving.dispatch
.SessionCheckpoint`: its history, where its KV is, its queued or granted segment) and one for what the cluster has
learned (the predictor's estimates, the policy's statistics, each engine's KV-log position).

Sessions are written ahead: the scheduler awaits `sync` before it answers a call that changed one, so a restart
never forgets a ticket, grant or finish that a caller was told of. Callers that change state together share one
write (group commit). What was learned is written behind, once a monitor tick: a restart may lose a second of
statistics, never a session.
"""

from __future__ import annotations

import asyncio
import pickle
import time

from prometheus_client import Histogram
from ray.experimental.internal_kv import internal_kv_get_gcs_client

from runtime.serving.dispatch import Dispatcher, SessionCheckpoint

SESSION = b"session/"
LEARNED = b"learned"
GET_BATCH = 1000  # keys per read when a restarted scheduler loads its sessions


class SchedulerJournal:
    def __init__(self, namespace: str, write_seconds: Histogram | None = None):
        """`write_seconds`: observes each group write's duration (the cost every changing call waits for)."""
        self.gcs = internal_kv_get_gcs_client()
        self.write_seconds = write_seconds
        self.namespace = f"agentriver-scheduler/{namespace}".encode()
        self.d: Dispatcher | None = None
        self._waiting: list[asyncio.Future] = []
        self._writer: asyncio.Task | None = None
        self.wrote_sessions = False  # since the last `save_learned`

    def track(self, d: Dispatcher) -> None:
        """Write the sessions `d` changes from now on (what `load` returned is already stored)."""
        d.changed.clear()
        self.d = d

    async def sync(self) -> None:
        """Returns once every change made before this call is stored."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write())
        await asyncio.shield(fut)

    async def _write(self) -> None:
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            changes = self.d.take_changes()  # taken with the waiters, so it holds every change they made
            if not changes:  # a caller that changed nothing only waited for the writes before it
                self._done(waiting)
                continue
            started = time.perf_counter()
            blobs = {SESSION + sid.encode(): None if cp is None else pickle.dumps(cp) for sid, cp in changes.items()}
            try:
                await asyncio.gather(*(self.gcs.async_internal_kv_put(k, v, True, self.namespace) if v is not None
                                       else self.gcs.async_internal_kv_del(k, False, self.namespace)
                                       for k, v in blobs.items()))
            except Exception as e:  # noqa: BLE001 - every waiter hears it; the sessions stay marked changed
                self.d.changed.update(changes)
                for f in waiting:
                    if not f.done():
                        f.set_exception(e)
                continue
            if self.write_seconds is not None:
                self.write_seconds.observe(time.perf_counter() - started)
            self.wrote_sessions = True
            self._done(waiting)

    @staticmethod
    def _done(waiting: list[asyncio.Future]) -> None:
        for f in waiting:
            if not f.done():
                f.set_result(None)

    async def save_learned(self, learned: object) -> None:
        self.wrote_sessions = False  # before the write: sessions written meanwhile ask for the next one
        try:
            await self.gcs.async_internal_kv_put(LEARNED, pickle.dumps(learned), True, self.namespace)
        except Exception:
            self.wrote_sessions = True  # not stored: the next tick tries again
            raise

    async def load(self) -> tuple[object | None, list[SessionCheckpoint]]:
        """What an earlier incarnation stored: (what it learned or None, its open sessions)."""
        keys = await self.gcs.async_internal_kv_keys(SESSION, self.namespace)
        sessions = []
        for i in range(0, len(keys), GET_BATCH):
            got = await self.gcs.async_internal_kv_multi_get(keys[i:i + GET_BATCH], self.namespace)
            sessions += [pickle.loads(v) for v in got.values()]
        learned = await self.gcs.async_internal_kv_get(LEARNED, self.namespace)
        return (None if learned is None else pickle.loads(learned)), sessions

    async def clear(self) -> None:
        """Forget everything stored: a scheduler that starts fresh (not restarted) owes nothing to an old one."""
        await self.gcs.async_internal_kv_del(b"", True, self.namespace)
