"""actors.scheduler_journal against Ray's real GCS: groups written ahead as the dispatcher changes, a journal that
loads them (a restarted scheduler) gets every open session as last written and no closed one, and the groups no
longer needed are deleted from the store."""

import asyncio

import pytest
import ray

from actors.scheduler_journal import GROUP, SchedulerJournal
from runtime.engine.job_hints import SegmentOutcome
from runtime.serving.dispatch import Dispatcher, EngineShape

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def dispatcher() -> Dispatcher:
    return Dispatcher([EngineShape(f"e{i}", 256, 16, 8, 2048) for i in range(2)])


def test_a_loaded_journal_holds_the_open_sessions_as_last_written_and_prunes_the_rest(local_ray):
    async def run():
        d, journal = dispatcher(), SchedulerJournal("journal-test")
        await journal.clear()
        journal.track(d)
        for rnd in range(6):  # six segments per session, 40 sessions, some closed along the way
            for k in range(40):
                sid = f"s{k}"
                if sid not in d.jobs and rnd > 0 and k % 5 == 0:
                    continue  # closed for good
                ticket = d.submit(sid, 100 * (rnd + 1), 8)
                d.grant()
                await journal.sync()
                d.finish(ticket, SegmentOutcome(8, 0.1, kv_state="discarded"))
                if rnd == 2 and k % 5 == 0:
                    d.close(sid)
                await journal.sync()
        stored = len(await journal.gcs.async_internal_kv_keys(GROUP, journal.namespace))
        again = SchedulerJournal("journal-test")
        _, sessions = await again.load()
        await journal.clear()
        return d, sessions, stored

    d, sessions, stored = asyncio.run(run())
    assert sorted(cp.job.job_id for cp in sessions) == sorted(d.jobs) and len(d.jobs) == 32
    for cp in sessions:
        assert [r.prompt_tokens for r in cp.records] == [r.prompt_tokens for r in d.records[cp.job.job_id]]
    assert stored <= len(d.jobs)  # of 440 groups written, those still holding a latest entry
