"""Which engines the scheduler's watch asks each second: every engine of a small fleet every time; a large fleet
in turns that keep to the per-second budget without leaving any engine unasked past the time it remembers a
finished segment. And the watch's garbage collection."""

import asyncio
import gc
import math
import weakref

from actors.global_scheduler import (
    MONITOR_S,
    WATCH_PARTS,
    WATCH_PER_S,
    WATCH_PERIOD_MAX_S,
    ask_in_parts,
    collect_garbage,
    watched,
)


def test_a_small_fleet_is_asked_whole_and_a_large_one_in_turns_that_cover_every_engine():
    assert list(watched(3, 0)) == list(watched(3, 7)) == [0, 1, 2]
    assert len(watched(WATCH_PER_S, 5)) == WATCH_PER_S
    limit = int(WATCH_PERIOD_MAX_S / MONITOR_S)
    for engines in (WATCH_PER_S + 1, 1000, 100_000):
        rounds = [list(watched(engines, tick)) for tick in range(limit)]
        assert set().union(*rounds) == set(range(engines))  # each at least once within the period
        if engines <= WATCH_PER_S * limit:
            assert max(map(len, rounds)) <= WATCH_PER_S  # within the budget wherever the period allows it
    # one of two shards of 1,000 engines, at half the budget: the two together ask as many engines a second as one
    # scheduler would, and each of its engines once in the period
    half = [list(watched(500, tick, WATCH_PER_S / 2)) for tick in range(limit)]
    assert max(map(len, half)) <= WATCH_PER_S / 2 and sorted(sum(half, [])) == list(range(500))


def test_a_round_is_asked_in_parts_spread_over_the_period():
    """Asked at once, 200 engines' answers held the scheduler's event loop for 100-190 ms: the round starts its asks
    in WATCH_PARTS groups spread over the period, each engine exactly once."""
    async def round_of(engines: range, period_s: float) -> dict[int, float]:
        loop, asked = asyncio.get_running_loop(), {}

        async def ask(i):
            asked[i] = loop.time()

        start = loop.time()
        await asyncio.gather(*await ask_in_parts(engines, ask, period_s, WATCH_PARTS))
        return {i: t - start for i, t in asked.items()}

    period = 0.5
    asked = asyncio.run(round_of(watched(1000, 3), period))
    assert sorted(asked) == list(watched(1000, 3))
    groups = sorted({round(t / (period / WATCH_PARTS)) for t in asked.values()})
    assert groups == list(range(1, WATCH_PARTS + 1))  # one group per gap, none asked before the first gap
    assert max(asked.values()) - min(asked.values()) >= 0.8 * period * (WATCH_PARTS - 1) / WATCH_PARTS


def test_garbage_the_watch_froze_is_freed_by_the_next_full_collection():
    """Each watch tick freezes what is alive, so that Python's collections walk only what is newer; a reference
    cycle that became garbage while frozen stays until the full collection, which thaws and collects everything."""

    class Node:
        pass

    a, b = Node(), Node()
    a.peer, b.peer = b, a
    alive = weakref.ref(a)
    try:
        assert collect_garbage(math.inf) == math.inf  # not due: the cycle is frozen with everything alive
        del a, b
        gc.collect()
        assert alive() is not None  # a collection skips what is frozen
        assert collect_garbage(0.0) > 0.0  # due: everything is thawed and collected, the next one scheduled
        assert alive() is None
    finally:
        gc.unfreeze()
