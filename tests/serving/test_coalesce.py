"""runtime.serving.coalesce: calls made while earlier ones are on their way go together, each caller gets its own
answer or error, and a caller that gave up is not sent. The remote side here is a coroutine that records what it
was sent (the coalescer's whole contract is that callable); the GlobalScheduler behind it is exercised by
tests/serving/test_app.py and bench.control_plane's test."""

import asyncio

import pytest

from runtime.serving.coalesce import Coalescer


class Remote:
    """Answers each call with its double after a short delay (a remote round trip), or with the exception a call
    asks for; records every batch it was sent."""

    def __init__(self, fail_batches: bool = False):
        self.batches: list[list] = []
        self.fail_batches = fail_batches

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)
        if self.fail_batches:
            raise ConnectionError("the remote side is gone")
        return [ValueError(f"bad call {x}") if x < 0 else 2 * x for x in items]


def test_a_lone_call_goes_at_once_and_later_calls_share_remote_calls():
    async def run():
        remote = Remote()
        c = Coalescer(remote, max_in_flight=1)
        first = await c.call(1)
        answers = await asyncio.gather(*(c.call(x) for x in range(2, 12)))
        return remote.batches, first, answers

    batches, first, answers = asyncio.run(run())
    assert first == 2 and answers == [2 * x for x in range(2, 12)]
    assert batches[0] == [1]
    assert batches[1:] == [[2], list(range(3, 12))]  # the 9 made while [2] was on its way went as one call


def test_each_caller_hears_its_own_refusal_and_a_transport_failure_reaches_the_whole_batch():
    async def run(remote):
        c = Coalescer(remote, max_in_flight=1)
        return await asyncio.gather(*(c.call(x) for x in (1, -2, 3)), return_exceptions=True)

    got = asyncio.run(run(Remote()))
    assert got[0] == 2 and got[2] == 6
    assert isinstance(got[1], ValueError) and str(got[1]) == "bad call -2"
    failed = asyncio.run(run(Remote(fail_batches=True)))
    assert all(isinstance(e, ConnectionError) for e in failed)


def test_a_caller_that_gave_up_before_its_batch_left_is_not_sent():
    async def run():
        remote = Remote()
        c = Coalescer(remote, max_in_flight=1)
        first = asyncio.ensure_future(c.call(1))
        await asyncio.sleep(0)  # [1] is on its way
        gone = asyncio.ensure_future(c.call(2))
        kept = asyncio.ensure_future(c.call(3))
        await asyncio.sleep(0)
        gone.cancel()
        return remote.batches, await first, await kept

    batches, first, kept = asyncio.run(run())
    assert (first, kept) == (2, 6) and batches == [[1], [3]]


def test_a_report_is_sent_even_when_its_caller_stopped_waiting():
    """A finish whose caller timed out while earlier calls were stuck (a scheduler restarting) must still reach the
    scheduler, or its segment would never end there."""
    async def run():
        remote = Remote()
        c = Coalescer(remote, max_in_flight=1, drop_abandoned=False)
        first = asyncio.ensure_future(c.call(1))
        await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.call(2), 0.001)  # gave up while [1] was on its way
        await first
        await asyncio.sleep(0.05)
        return remote.batches

    assert asyncio.run(run()) == [[1], [2]]


def test_max_batch_one_sends_every_call_alone_and_limits_are_checked():
    async def run():
        remote = Remote()
        c = Coalescer(remote, max_in_flight=100, max_batch=1)
        await asyncio.gather(*(c.call(x) for x in range(5)))
        return remote.batches

    assert asyncio.run(run()) == [[x] for x in range(5)]
    with pytest.raises(ValueError, match="max_in_flight and max_batch must be >= 1"):
        Coalescer(Remote(), max_in_flight=0)
