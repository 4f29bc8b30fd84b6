"""`Coalescer`: one process's calls of one kind to a remote service, sent together while earlier ones are on their way.

Why: a Ray actor call costs both ends about a millisecond of CPU whatever it carries, and every segment needs two
scheduler calls (acquire, finish), so callers in one process that each make their own call cap the scheduler near
500-800 segments/s on this machine, however little it does per call (bench.control_plane's bare actor). Here a call
made while `max_in_flight` calls of its kind are already on their way waits for one of them to come back and then
goes with every other call that waited meanwhile, in one remote call (natural batching, as a group commit): a lone
caller is sent at once and waits for nothing more, and many callers share remote calls, so the batch grows with the
load instead of with a timer.

The remote side answers a batch with one result per call, in order; a result that is an exception is raised to its
own caller only. A transport failure (the remote call itself raised) reaches every caller in the batch. A caller
that gives up (its task cancelled, a timeout) before its batch is sent is left out of it (`drop_abandoned`, for a
request nobody waits for any more: a segment's acquire), or sent anyway (a report that must arrive whether or not
its sender still waits: a segment's finish, which the scheduler needs to end the segment). Once sent, a call runs
and an answer nobody waits for is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class Coalescer:
    def __init__(self, send: Callable[[list], Awaitable[list]], max_in_flight: int = 2, max_batch: int = 1024,
                 drop_abandoned: bool = True):
        """`send`: takes a list of calls, returns an awaitable of their results in order. `max_batch` 1 sends
        each call alone (what coalescing saves, measured against)."""
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError(f"max_in_flight and max_batch must be >= 1, got {max_in_flight} and {max_batch}")
        self.send, self.max_in_flight, self.max_batch = send, max_in_flight, max_batch
        self.drop_abandoned = drop_abandoned
        self._waiting: list[tuple[Any, asyncio.Future]] = []
        self._in_flight = 0
        self.batches = 0  # remote calls made
        self.calls = 0  # calls they carried

    async def call(self, item: Any) -> Any:
        """`item`'s result, sent with whatever else is waiting when a remote call of this kind is free."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        self._launch()
        result = await (fut if self.drop_abandoned else asyncio.shield(fut))  # shielded: a caller leaving keeps it
        if isinstance(result, BaseException):
            raise result
        return result

    def _launch(self) -> None:
        while self._in_flight < self.max_in_flight and self._waiting:
            batch = [(item, fut) for item, fut in self._waiting[:self.max_batch] if not fut.done()]
            del self._waiting[:self.max_batch]
            if batch:
                self._in_flight += 1
                asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await self.send([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results came back for a batch of {len(batch)} calls")
        except BaseException as e:  # noqa: BLE001 - the transport failed: every caller in the batch hears it
            results = [e] * len(batch)
        finally:
            self._in_flight -= 1
            self.batches += 1
            self.calls += len(batch)
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)
        self._launch()
