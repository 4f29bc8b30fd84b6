"""Which engines the scheduler's watch asks each second: every engine of a small fleet every time; a large fleet
in turns that keep to the per-second budget without leaving any engine unasked past the time it remembers a
finished segment."""

from actors.global_scheduler import MONITOR_S, WATCH_PER_S, WATCH_PERIOD_MAX_S, watched


def test_a_small_fleet_is_asked_whole_and_a_large_one_in_turns_that_cover_every_engine():
    assert list(watched(3, 0)) == list(watched(3, 7)) == [0, 1, 2]
    assert len(watched(WATCH_PER_S, 5)) == WATCH_PER_S
    limit = int(WATCH_PERIOD_MAX_S / MONITOR_S)
    for engines in (WATCH_PER_S + 1, 1000, 100_000):
        rounds = [list(watched(engines, tick)) for tick in range(limit)]
        assert set().union(*rounds) == set(range(engines))  # each at least once within the period
        if engines <= WATCH_PER_S * limit:
            assert max(map(len, rounds)) <= WATCH_PER_S  # within the budget wherever the period allows it
