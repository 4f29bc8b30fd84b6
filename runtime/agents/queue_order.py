"""The waiting queue in a policy's order, sorted only as far as an admission pass looks at it.

An overloaded engine holds hundreds of waiting segments and runs an admission pass at every segment end. A pass
admits from the head of the order until a segment does not fit; from then on (the packing tail) it looks only at
segments small enough to fit. A policy whose rank starts with a coarse class splits its queue into groups that
rank wholly before one another (`Policy.order_groups`); a group is sorted when the pass reaches it, and a group
reached only in the tail is sorted only among its segments that fit. Astraea's not-yet-started jobs, most of an
overloaded queue, are one such group: its rank reads the clock, so sorting it whole at every pass was most of the
simulator's time (profiled: SWE at 8x load). The pass sees what a full sort would give it, job for job
(tests/agents/test_sim.py compares the two).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from runtime.agents.job import Job, KVState

Position = tuple[int, Job]  # (group index, job): where a visited segment stands in the full order


class QueueOrder:
    """Iterates the waiting segments in the policy's order; `narrow` turns the rest into the packing tail."""

    def __init__(self, groups: Iterable[list[Job]], sort: Callable[[list[Job]], list[Job]]):
        self._next_groups = iter(groups)  # a policy may work out its groups only as they are reached
        self._groups: list[list[Job]] = []  # those reached; sorting a part of one is sorting the whole and
        # keeping the part (`Policy.order_groups`)
        self._sort = sort
        self._whole: dict[int, list[Job]] = {}  # group index -> the group sorted whole, once it is needed
        self._fitting: Callable[[list[Job]], list[Job]] | None = None
        self._run: list[Job] = []  # what is visited of the group reached last, in order
        self._i = 0
        self.position: Position | None = None  # of the segment returned last

    def __iter__(self) -> QueueOrder:
        return self

    def __next__(self) -> Job:
        while self._i >= len(self._run):
            group = next(self._next_groups, None)
            if group is None:
                raise StopIteration
            self._groups.append(group)
            if self._fitting is None:
                self._run = self._sorted_whole(len(self._groups) - 1)
            else:
                fitting = self._fitting(group)
                self._run = self._sort(fitting) if fitting else fitting
            self._i = 0
        job = self._run[self._i]
        self._i += 1
        self.position = (len(self._groups) - 1, job)
        return job

    def narrow(self, fitting: Callable[[list[Job]], list[Job]]) -> None:
        """From here on, only the segments `fitting` keeps of a list (in its order; the same answer throughout the
        pass)."""
        self._fitting = fitting
        self._run = self._run[:self._i] + fitting(self._run[self._i:])

    def waiting_between(self, a: Position, b: Position) -> bool:
        """Whether a segment whose KV is not being swapped out lies strictly between `a` and `b` (both returned
        already) in the full order, sorting the groups involved whole: the tail asks only when no block is left."""
        (ga, ja), (gb, jb) = a, b
        run_a, run_b = self._sorted_whole(ga), self._sorted_whole(gb)
        pa, pb = _index(run_a, ja), _index(run_b, jb)
        if ga == gb:
            return _any_waiting(run_a[pa + 1:pb])
        return (_any_waiting(run_a[pa + 1:]) or any(_any_waiting(self._groups[g]) for g in range(ga + 1, gb))
                or _any_waiting(run_b[:pb]))

    def _sorted_whole(self, g: int) -> list[Job]:
        run = self._whole.get(g)
        if run is None:
            run = self._whole[g] = self._sort(self._groups[g])
        return run


def _index(run: list[Job], job: Job) -> int:
    return next(i for i, j in enumerate(run) if j is job)


def _any_waiting(jobs: list[Job]) -> bool:
    return any(j.kv is not KVState.SWAPPING_OUT for j in jobs)
