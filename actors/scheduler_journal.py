"""`SchedulerJournal`: the GlobalScheduler's checkpoint, kept in Ray's internal key-value store.

Why there: it lives in the GCS, which outlives any actor or worker node (and, with GCS fault tolerance backed by
Redis, the head node too), it needs no service or path besides the cluster itself, and a restarted actor reads it
on whichever node Ray puts it. What is kept: one entry per open session (`runtime.serving.dispatch
.SessionCheckpoint`: its history, where its KV is, its queued or granted segment) and one for what the cluster has
learned (the predictor's estimates, the policy's statistics, each engine's KV-log position).

Sessions are written ahead: the scheduler awaits `sync` before it answers a call that changed one, so a restart
never forgets a ticket, grant or finish that a caller was told of. Callers that change state together share one
write (group commit), and that write is one entry for the whole group (`runtime.serving.group_log` says which
entries are still needed and deletes the rest): one store put per session was most of the scheduler's work at
fleet scale. What was learned is written behind, once a monitor tick: a restart may lose a second of statistics,
never a session.
"""

from __future__ import annotations

import asyncio
import pickle
import time

from prometheus_client import Histogram
from ray.experimental.internal_kv import internal_kv_get_gcs_client

from runtime.serving.dispatch import Dispatcher, SessionCheckpoint
from runtime.serving.group_log import GroupLog

GROUP = b"group/"
LEARNED = b"learned"
GET_BATCH = 1000  # keys per read when a restarted scheduler loads its sessions


def group_key(seq: int) -> bytes:
    return GROUP + b"%020d" % seq  # ordered as numbers when listed


class SchedulerJournal:
    def __init__(self, namespace: str, write_seconds: Histogram | None = None):
        """`write_seconds`: observes each group write's duration (the cost every changing call waits for)."""
        self.gcs = internal_kv_get_gcs_client()
        self.write_seconds = write_seconds
        self.namespace = f"agentriver-scheduler/{namespace}".encode()
        self.d: Dispatcher | None = None
        self.log = GroupLog()
        self._again: set[str] = set()  # sessions of sparse groups a restore found: written again first
        self._waiting: list[asyncio.Future] = []
        self._writer: asyncio.Task | None = None
        self.wrote_sessions = False  # since the last `save_learned`

    def track(self, d: Dispatcher) -> None:
        """Write the sessions `d` changes from now on (what `load` returned is already stored)."""
        d.changed.clear()
        d.changed.update(self._again)
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
            seq = self.log.next_seq
            try:
                await self.gcs.async_internal_kv_put(group_key(seq), pickle.dumps(changes), True, self.namespace)
            except Exception as e:  # noqa: BLE001 - every waiter hears it; the sessions stay marked changed
                self.d.changed.update(changes)
                for f in waiting:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.d.changed.update(self.log.written(seq, {sid: cp is not None for sid, cp in changes.items()}))
            if self.write_seconds is not None:
                self.write_seconds.observe(time.perf_counter() - started)
            self.wrote_sessions = True
            self._done(waiting)
            await self._collect()

    async def _collect(self) -> None:
        """Delete the groups no longer needed; one that could not be deleted is tried again when it is next named."""
        dead = self.log.dead()
        results = await asyncio.gather(*(self.gcs.async_internal_kv_del(group_key(seq), False, self.namespace)
                                         for seq in dead), return_exceptions=True)
        for seq, result in zip(dead, results, strict=True):
            if not isinstance(result, BaseException):
                self.log.deleted(seq)

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
        """What an earlier incarnation stored: (what it learned or None, its open sessions). Its groups are
        replayed in order (a session's last entry wins) into this journal's bookkeeping."""
        keys = sorted(await self.gcs.async_internal_kv_keys(GROUP, self.namespace))
        latest: dict[str, SessionCheckpoint | None] = {}
        for i in range(0, len(keys), GET_BATCH):
            got = await self.gcs.async_internal_kv_multi_get(keys[i:i + GET_BATCH], self.namespace)
            for key in keys[i:i + GET_BATCH]:
                if key in got:
                    changes = pickle.loads(got[key])
                    latest.update(changes)
                    self._again |= self.log.written(int(key[len(GROUP):]), {s: cp is not None
                                                                            for s, cp in changes.items()})
        learned = await self.gcs.async_internal_kv_get(LEARNED, self.namespace)
        return (None if learned is None else pickle.loads(learned)), [cp for cp in latest.values() if cp is not None]

    async def clear(self) -> None:
        """Forget everything stored: a scheduler that starts fresh (not restarted) owes nothing to an old one."""
        await self.gcs.async_internal_kv_del(b"", True, self.namespace)
