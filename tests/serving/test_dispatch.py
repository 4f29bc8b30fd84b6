"""The dispatcher's decisions (pure Python: the GlobalScheduler actor only adds Ray around it)."""

import pickle
import random
from dataclasses import asdict

import pytest

from runtime.agents.costmodel import LLAMA3_8B_A100, LLAMA3_8B_H100, StepCost
from runtime.engine.job_hints import SegmentOutcome
from runtime.serving.dispatch import (
    Dispatcher,
    EngineShape,
    Grant,
    NoEngine,
    QueueFull,
    SessionBusy,
    UnknownSession,
    UnknownTicket,
)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(n=2, blocks=64, seqs=4, **kw):
    clock = Clock()
    infos = [EngineShape(f"e{i}", blocks, 32, seqs, 1024) for i in range(n)]
    return Dispatcher(infos, clock=clock, **kw), clock


def test_a_session_is_one_job_whose_history_spans_its_segments():
    d, clock = make()
    t = d.submit("s", 100, 16, tool_category="search")
    clock.t += 2.0
    [g] = d.grant()
    assert g.ticket == t and g.hint.seg == 0 and g.hint.prompt_tokens == 100 and g.hint.tool_category == "search"
    clock.t += 1.0
    d.finish(t, SegmentOutcome(16, 1.0, kv_state="preserved", kv_tokens=116))
    clock.t += 5.0
    t1 = d.submit("s", 150, 16)  # the whole conversation again: 34 new tokens after 116 known
    [g1] = d.grant()
    assert g1.hint.seg == 1 and g1.hint.context_tokens == 116 and g1.hint.prompt_tokens == 34
    assert g1.hint.tools == ("search",)
    assert g1.hint.waited_s == pytest.approx(2.0) and g1.hint.attained_s == pytest.approx(1.0)
    assert g1.engine == g.engine  # its KV is kept there and the other engine is no faster
    d.finish(t1, SegmentOutcome(8, 0.5, kv_state="discarded"))
    view = d.session_view("s")
    assert view["segments"] == 2 and view["waited_s"] == pytest.approx(2.0) and view["state"] == "tool"
    assert [r["output_tokens"] for r in view["segment_log"]] == [16, 8]
    done = d.close("s")
    assert done.segments == 2 and done.jct_s == pytest.approx(8.0)
    with pytest.raises(UnknownSession):
        d.session_view("s")


def test_new_jobs_spread_over_engines_and_admission_holds_the_rest():
    d, _ = make(n=2, blocks=8, seqs=4)  # 8 blocks of 32 tokens: one 200+16 token segment needs 7
    tickets = [d.submit(f"s{i}", 200, 16) for i in range(3)]
    grants = d.grant()
    assert sorted(g.engine for g in grants) == [0, 1]  # one per engine; the third does not fit anywhere
    assert len(d.queue) == 1
    d.finish(grants[0].ticket, SegmentOutcome(16, 0.1))
    [late] = d.grant()
    assert late.ticket == (set(tickets) - {g.ticket for g in grants}).pop() and late.engine == grants[0].engine


def test_bounded_queue_says_when_to_retry():
    d, _ = make(n=1, max_queue=2)
    d.submit("a", 10, 4)
    d.submit("b", 10, 4)
    with pytest.raises(QueueFull) as e:
        d.submit("c", 10, 4)
    assert e.value.retry_after_s >= 1.0
    assert set(d.jobs) == {"a", "b"}  # nothing accepted was lost


def test_one_segment_at_a_time_per_session():
    d, _ = make()
    d.submit("a", 10, 4)
    with pytest.raises(SessionBusy):
        d.submit("a", 12, 4)
    with pytest.raises(SessionBusy):
        d.close("a")
    with pytest.raises(ValueError, match="context length 1024"):
        d.submit("b", 1020, 8)


def test_a_segment_whose_engine_died_is_recomputed_elsewhere_with_its_history():
    d, clock = make(n=2)
    t = d.submit("s", 100, 20)
    [g] = d.grant()
    clock.t += 3.0
    d.fail(t, emitted_tokens=5)
    assert not d.engines[g.engine].alive
    [again] = d.grant()
    assert again.ticket == t and again.engine != g.engine
    assert again.hint.prompt_tokens == 105 and again.max_tokens == 15  # continues after what was sent
    d.finish(t, SegmentOutcome(15, 1.0))
    assert d.session_view("s")["segment_log"][0]["retries"] == 1
    d.engine_down(again.engine)
    with pytest.raises(NoEngine):
        d.submit("s", 200, 4)
    d.engine_up(g.engine, d.engines[g.engine].info)
    d.submit("s", 200, 4)
    assert d.grant()[0].engine == g.engine


def test_idle_sessions_expire_and_cancelled_segments_leave_no_trace():
    d, clock = make()
    t = d.submit("s", 10, 4)
    d.grant()
    d.finish(t, SegmentOutcome(4, 0.1))
    d.cancel(d.submit("q", 10, 4))
    assert "q" not in d.jobs and not len(d.queue)
    clock.t += 100
    assert [f.session_id for f in d.expire(60.0)] == ["s"]
    assert not d.jobs


def test_changes_an_engine_makes_on_its_own_update_kept_kv():
    d, clock = make(n=1)
    t = d.submit("s", 100, 10)
    d.grant()
    d.finish(t, SegmentOutcome(10, 0.1, kv_state="preserved", kv_tokens=110))
    assert d.engines[0].held == {"s": 4}
    d.engine_kv_changes(0, [(1, "s", 0, "swapped", 110)])  # memory pressure moved it to host memory
    assert d.engines[0].held == {} and d.session_view("s")["kv_state"] == "swapped"
    d.engine_kv_changes(0, [(2, "s", 0, "discarded", 0)])  # then its host copy was dropped
    assert d.session_view("s")["kv_state"] == "discarded"


def test_an_engine_change_to_an_earlier_tool_call_is_old_news():
    d, clock = make(n=1)
    t = d.submit("s", 100, 10)
    d.grant()
    d.finish(t, SegmentOutcome(10, 0.1, kv_state="preserved", kv_tokens=110))
    t = d.submit("s", 130, 10)
    d.grant()
    d.engine_kv_changes(0, [(1, "s", 0, "discarded", 0)])  # about seg 0's call, while seg 1 runs
    d.finish(t, SegmentOutcome(10, 0.1, kv_state="preserved", kv_tokens=140))
    d.engine_kv_changes(0, [(1, "s", 0, "discarded", 0)])  # delivered again, late
    assert d.session_view("s")["kv_state"] == "preserved" and d.engines[0].held == {"s": 5}


def test_a_reused_order_still_puts_a_job_that_became_ready_at_its_place():
    """With the order cached (refresh_s), a resuming job that arrives after the cache was built is inserted by
    the policy's key: Astraea runs in-flight jobs before new ones."""
    d, clock = make(n=1, seqs=1, refresh_s=10.0)
    t = d.submit("old", 50, 4)
    d.grant()
    d.finish(t, SegmentOutcome(4, 0.1))
    d.submit("n1", 50, 4)
    d.submit("n2", 50, 4)
    [first] = d.grant()  # builds the cached order [n1, n2]
    assert first.session_id == "n1"
    clock.t += 1.0
    d.submit("old", 80, 4)
    d.finish(first.ticket, SegmentOutcome(4, 0.1))
    [nxt] = d.grant()
    assert nxt.session_id == "old"


def test_a_grant_whose_caller_vanished_is_reconciled_and_a_late_report_changes_nothing():
    """The engine's report names what it runs and what it finished (how long ago): a grant it finished without a
    `finish` from the caller after a short grace, or never started after a long one, has lost its caller and is
    cancelled (its KV room and slot come back); the engine is told to abort what it runs for nobody; a finish that
    arrives afterwards is ignored; the session's next call works."""
    d, clock = make(n=1, seqs=2)
    t = d.submit("s", 100, 10)
    d.grant()
    clock.t += 5.0
    assert d.reconcile(0, set(), {}, asked_at=clock.t, start_grace_s=30.0, end_grace_s=2.0) == []  # not started yet
    assert d.reconcile(0, set(), {t: 1.0}, asked_at=clock.t, start_grace_s=30.0, end_grace_s=2.0) == []  # finishing
    assert t in d.engines[0].inflight
    clock.t += 30.0
    assert d.reconcile(0, {"ghost/0/99"}, {}, asked_at=clock.t, start_grace_s=30.0,
                       end_grace_s=2.0) == ["ghost/0/99"]
    assert not d.engines[0].inflight and d.engines[0].room()[1] == 2
    assert d.finish(t, SegmentOutcome(10, 0.1)) is False  # the late report of a reconciled grant
    assert "s" not in d.jobs  # a first segment that never ran leaves no session behind
    t2 = d.submit("s", 100, 10)
    assert t2 != t  # tickets are never reused, so a late report cannot land on the new one
    [g2] = d.grant()
    assert d.reconcile(0, set(), {t2: 3.0}, asked_at=clock.t, start_grace_s=30.0, end_grace_s=2.0) == []
    assert t2 not in d.engines[0].inflight  # it ended there 3 s ago and its caller never said so
    assert d.finish(g2.ticket, SegmentOutcome(10, 0.1)) is False


def test_with_no_engine_alive_queued_and_retried_segments_fail_fast():
    d, _ = make(n=1, seqs=1)
    running = d.submit("a", 10, 4)
    d.grant()
    queued = d.submit("b", 10, 4)
    assert d.refuse_queued() == []  # an engine is alive: the queue waits
    with pytest.raises(NoEngine):
        d.fail(running, emitted_tokens=2)  # the only engine died: nothing could run the rest
    assert d.refuse_queued() == [queued]
    assert not len(d.queue) and not d.pending and not d.jobs
    with pytest.raises(UnknownTicket):
        d.fail(running)


def test_a_closed_session_id_starts_a_new_job():
    d, _ = make(n=1)
    t = d.submit("s", 100, 10)
    d.grant()
    d.finish(t, SegmentOutcome(10, 0.1))
    d.close("s")
    d.submit("s", 20, 4)
    [g] = d.grant()
    assert g.hint.seg == 0 and g.hint.context_tokens == 0 and g.hint.prompt_tokens == 20


def test_the_engine_outcome_feeds_the_history_and_policy():
    """The measured segment decides the MLFQ level (over its queue's quota: demoted), and the engine's own
    queueing joins the job's waited time; the next hint carries both."""
    d, clock = make(n=1)
    t = d.submit("s", 100, 400)
    d.grant()
    d.finish(t, SegmentOutcome(300, 1.0, queued_s=0.25, prefill_tokens=100))
    d.submit("s", 450, 16)
    [g] = d.grant()
    assert g.hint.level == 1 and g.hint.waited_s == pytest.approx(0.25)
    assert g.hint.forecast_output_tokens == pytest.approx(300.0)  # learned online from the one it saw


def test_engines_release_what_they_hold_for_ended_and_moved_jobs():
    """Closing or expiring a session, and granting a job's next segment to another engine, queue a release for
    the engine that ran it (named by the job's arrival, so a new job of the same id is not hit); a one-shot call's
    engine released the job itself with its last segment."""
    d, clock = make(n=2, seqs=1)
    tb = d.submit("b", 100, 10)
    ta = d.submit("a", 100, 10)
    gb, ga = d.grant()
    d.finish(ta, SegmentOutcome(10, 0.1))
    d.finish(tb, SegmentOutcome(10, 0.1))
    arrival = d.jobs["a"].arrival_s
    d.close("a")
    assert d.take_releases() == {ga.engine: {"a": arrival}} and d.take_releases() == {}
    busy = d.submit("x", 100, 10)  # takes b's engine, so b's next segment moves
    assert d.grant()[0].engine == gb.engine
    d.submit("b", 150, 10)
    [gb2] = d.grant()
    assert gb2.engine != gb.engine and d.take_releases() == {gb.engine: {"b": arrival}}
    d.finish(busy, SegmentOutcome(10, 0.1))
    d.finish(gb2.ticket, SegmentOutcome(10, 0.1))
    clock.t += 1000
    assert len(d.expire(60.0)) == 2
    assert d.take_releases() == {gb.engine: {"x": arrival}, gb2.engine: {"b": arrival}}
    one = d.submit("once", 50, 4, last=True)
    d.grant()
    d.finish(one, SegmentOutcome(4, 0.1, kv_state="none"))
    d.close("once")
    assert d.take_releases() == {}


def test_an_outcome_is_what_the_plugin_reported_with_the_tokens_the_caller_received():
    reported = {"service_s": 0.5, "queued_s": 0.1, "prefill_tokens": 40, "kv_state": "preserved", "kv_tokens": 47}
    assert SegmentOutcome.of(reported, 8, 9.9) == SegmentOutcome(8, 0.5, 0.1, 40, "preserved", 47)
    assert SegmentOutcome.of(None, 8, 9.9) == SegmentOutcome(8, 9.9)  # untracked: freed, timed by the caller


class Store:
    """What the scheduler's journal keeps: each group of checkpoints `take_changes` hands out, pickled as one entry
    (None: a closed session), replayed in order, and the learned estimates."""

    def __init__(self):
        self.groups: list[bytes] = []

    def save(self, d: Dispatcher) -> None:
        self.groups.append(pickle.dumps(d.take_changes()))
        self.learned = pickle.dumps(d.learned())

    def restored(self, clock, **kw) -> Dispatcher:
        d, _ = make(n=2, seqs=1, **kw)
        d.clock = clock
        latest = {}
        for group in self.groups:
            latest.update(pickle.loads(group))
        d.restore(pickle.loads(self.learned), [cp for cp in latest.values() if cp is not None])
        return d


def test_a_restarted_dispatcher_restores_its_sessions_and_decides_as_before():
    """Sessions in every state (in a tool call with KV kept, running, queued, closed) are stored as the changes
    happen and restored into a new dispatcher; the same calls afterwards get the same grants (engine, hint) and the
    same session views from both, and a repeated submit of a stored ticket is answered with that ticket."""
    d, clock = make(n=2, seqs=1)
    store = Store()
    t1 = d.submit("s1", 100, 16, tool_category="search")
    d.grant()
    clock.t += 1.0
    d.finish(t1, SegmentOutcome(16, 1.0, kv_state="preserved", kv_tokens=116))  # s1 in its tool call, KV kept
    store.save(d)
    t5 = d.submit("s5", 50, 8)
    d.grant()
    d.finish(t5, SegmentOutcome(8, 0.2))
    d.close("s5")
    store.save(d)
    t2 = d.submit("s2", 100, 16, ticket="client-named")
    assert t2 == "client-named"
    t3 = d.submit("s3", 300, 16)
    t4 = d.submit("s4", 400, 16)
    grants = {g.session_id: g for g in d.grant()}
    assert set(grants) == {"s2", "s3"}  # one sequence slot per engine: the longest, s4, queued
    clock.t += 0.5
    store.save(d)

    r = store.restored(clock)
    assert set(r.jobs) == {"s1", "s2", "s3", "s4"}  # s5 was closed
    assert r.submit("s2", 100, 16, ticket="client-named") == "client-named"  # a re-sent submit
    assert r.pending["client-named"].grant == grants["s2"]  # the grant its caller may ask for again

    def script(x: Dispatcher) -> list:
        out = []
        clock.t += 2.0
        x.finish(t2, SegmentOutcome(16, 2.0, kv_state="discarded"))
        out += x.grant()
        x.finish(t3, SegmentOutcome(16, 2.5, kv_state="preserved", kv_tokens=316))
        clock.t += 1.0
        t1b = x.submit("s1", 150, 16, ticket="s1-back")  # back from its tool call
        out += x.grant()
        x.finish(t4, SegmentOutcome(10, 1.0))
        out += x.grant()
        x.finish(t1b, SegmentOutcome(12, 1.0))
        out.append([x.session_view(s) for s in ("s1", "s2", "s3", "s4")])
        out.append([e.view() for e in x.engines])
        return out

    start = clock.t
    expected = script(d)
    clock.t = start
    assert script(r) == expected
    assert any(isinstance(g, Grant) and g.session_id == "s1" for g in expected)


def test_expiry_follows_each_sessions_latest_tool_call_also_after_a_restore():
    """`expire` reads only the sessions longest in a tool call: one back from its tool and in a new call, or whose
    segment was withdrawn, counts its idle time from then, and a restored dispatcher keeps that order."""
    d, clock = make()
    store = Store()

    def segment(sid: str, prompt: int) -> None:
        t = d.submit(sid, prompt, 4)
        d.grant()
        d.finish(t, SegmentOutcome(4, 0.1))
        clock.t += 10.0

    for sid in ("a", "b", "c"):
        segment(sid, 10)  # tool calls start at 0, 10, 20 s
    segment("a", 20)  # a's second call starts at 30 s
    d.cancel(d.submit("b", 20, 4))  # b's next segment withdrawn at 40 s: idle from then
    store.save(d)
    clock.t += 25.0  # 65 s: c (45 s idle) past a 40 s limit, a (35 s) and b (25 s) not
    assert [f.session_id for f in d.expire(40.0)] == ["c"]
    r = store.restored(clock)
    assert [f.session_id for f in r.expire(40.0)] == ["c"]
    clock.t += 10.0
    assert [f.session_id for f in r.expire(40.0)] == ["a"] == [f.session_id for f in d.expire(40.0)]
    assert set(d.jobs) == set(r.jobs) == {"b"}


def test_a_submit_naming_another_sessions_ticket_is_refused():
    d, _ = make()
    d.submit("a", 10, 4, ticket="t")
    with pytest.raises(ValueError, match="ticket"):
        d.submit("b", 10, 4, ticket="t")


def test_engines_pull_least_backlog_first_and_kept_kv_sums_follow_every_change():
    """The dispatcher keeps the engines' backlog order and each engine's kept-KV total as grants start and end
    (a thousand engines are not re-sorted or re-summed per grant): both must equal a fresh computation."""
    d, clock = make(n=5, blocks=256, seqs=8)
    tickets = {}
    for i in range(12):
        tickets[f"s{i}"] = d.submit(f"s{i}", 100 + 50 * i, 16)
        d.grant()
    for i, (sid, t) in enumerate(tickets.items()):
        clock.t += 0.5
        d.finish(t, SegmentOutcome(16, 0.2, kv_state=("preserved", "swapped", "discarded")[i % 3], kv_tokens=300))
        if i % 4 == 0:
            d.close(sid)
    d.engine_down(3)
    for eng in d.engines:
        assert eng._held == sum(eng.held.values())
        assert eng.view()["kv_blocks_held"] == sum(eng.held.values())
    alive = sorted((e.backlog_s(), e.slowdown, e.index) for e in d.engines if e.alive)
    assert d._by_backlog == alive and 3 not in [i for *_, i in d._by_backlog]
    d.engine_up(3, d.engines[3].info)
    busy = d.submit("busy", 400, 64)  # one engine gets a backlog; the next job goes to the least loaded other
    [first] = d.grant()
    assert d._by_backlog[-1] == (d.engines[first.engine].backlog_s(), 1.0, first.engine)
    d.submit("new", 100, 16)
    least = min((e.backlog_s(), e.index) for e in d.engines)[1]
    [g] = d.grant()
    assert g.engine == least
    assert g.engine != first.engine and busy in d.engines[first.engine].inflight


def test_an_engine_that_reports_slower_steps_carries_its_work_at_its_own_speed():
    """Engines of different hardware report different step costs (AGENTRIVER_COST). The dispatcher's one predictor
    estimates in the first engine's time, so a segment granted to an engine twice as slow must weigh twice as much
    in that engine's backlog, or placement queues work behind it as if it were as fast."""
    clock = Clock()
    fast = EngineShape("fast", 256, 32, 1, 1024)  # one sequence slot: the second segment must go to the slow one
    slow = EngineShape("slow", 256, 32, 8, 1024, cost=StepCost(**{k: 2 * v for k, v in asdict(fast.cost).items()}))
    d = Dispatcher([slow, fast], clock=clock)  # the predictor plans in the first engine's time: the slow one's
    assert [e.slowdown for e in d.engines] == pytest.approx([1.0, 0.5])
    d.submit("a", 300, 64)
    [ga] = d.grant()
    assert ga.engine == 1  # both idle: the faster pulls first
    d.submit("b", 300, 64)
    [gb] = d.grant()
    assert gb.engine == 0
    fast_s, slow_s = d.engines[1].backlog_s(), d.engines[0].backlog_s()
    assert slow_s == pytest.approx(2 * fast_s) and fast_s > 0
    restored = Dispatcher([slow, fast], clock=clock)  # after a scheduler restart, the same backlogs
    restored.restore(pickle.loads(pickle.dumps(d.learned())), [cp for cp in d.take_changes().values() if cp])
    assert [e.backlog_s() for e in restored.engines] == pytest.approx([e.backlog_s() for e in d.engines])


@pytest.mark.parametrize("running", [1, 12])
def test_a_new_segment_goes_where_it_joins_at_the_lower_cost_not_where_less_work_is_queued(running):
    """The simulator's deferral (`GlobalQueue`'s `defer_to_cheaper`), in the dispatcher (an H100 and an A100 as
    the simulator prices them). The idle slow engine has
    the least backlog and pulls first; but one more sequence costs less on the fast engine while few run there, so
    it leaves the segment to the fast one. With 12 long sequences on the fast engine, one more slows each of them
    (`NextStep.join_cost_s`): then the idle slow engine is the cheaper place and keeps it."""
    clock = Clock()
    fast = EngineShape("fast", 4096, 32, 16, 8192, cost=LLAMA3_8B_H100.cost)
    slow = EngineShape("slow", 4096, 32, 16, 8192, cost=LLAMA3_8B_A100.cost)
    d = Dispatcher([slow, fast], clock=clock)
    d.engine_down(0)  # while the fast engine's sequences are placed
    for i in range(running):
        d.submit(f"run{i}", 6000, 64)
        [g] = d.grant()
    d.engine_up(0, slow)
    slow_step, fast_step = d.engines[0].next_step(), d.engines[1].next_step()
    assert d._by_backlog[0][-1] == 0  # the slow engine pulls first
    d.submit("new", 300, 64)
    [g] = d.grant()
    fast_is_cheaper = fast_step.join_cost_s(300) < slow_step.join_cost_s(300)
    assert fast_is_cheaper == (running == 1)
    assert g.engine == (1 if fast_is_cheaper else 0)


def test_a_job_priced_to_stay_for_its_home_is_decided_as_if_priced_anew():
    """Engines pull in turn and each prices the queued jobs whose KV another engine holds; a job found to stay is
    not priced again on an engine no faster while its home's backlog has not grown (`GlobalQueue._moves`). Every
    decision, through a random walk of engine speeds, home backlogs and decode-speed drift, must equal a fresh
    pricing, and the kept decision must really be used (a pricing skipped) in many of them."""
    rng = random.Random(0)
    d, clock = make(n=6, blocks=512, seqs=8)
    t = d.submit("a", 900, 16)
    d.grant()
    d.finish(t, SegmentOutcome(16, 0.5, 0.0, 900, "preserved", 916))
    d.submit("a", 1000, 16)  # queued with its KV held where it ran
    job = d.jobs["a"]
    home = d.engines[job.engine]
    others = [e for e in d.engines if e is not home]
    scale = d.pred.recompute_s(job.kv_tokens)  # home backlogs around what moving would cost
    priced, price = [], d.pred.compute_s
    d.pred.compute_s = lambda j: priced.append(j) or price(j)
    running, skipped, moved = [], 0, 0
    for step in range(400):
        if rng.random() < 0.1:
            running.append(f"x{step}")
            home.start(running[-1], 1, rng.uniform(0.0, scale), clock.t)
        elif running and rng.random() < 0.15:
            home.end(running.pop(rng.randrange(len(running))))
        if rng.random() < 0.05:
            d.pred.decode_s_per_token *= rng.uniform(0.8, 1.25)
        engine = rng.choice(others)
        engine.slowdown = rng.choice([0.25, 0.5, 1.0, 2.0])
        before = len(priced)
        decided = d.queue._moves(job, engine, home)
        skipped += len(priced) == before
        memo = job.policy_state.pop("queue_stays", None)
        assert decided == d.queue._moves(job, engine, home), f"step {step}"
        job.policy_state["queue_stays"] = memo
        moved += decided
    assert skipped > 50 and 20 < moved < 380, (skipped, moved)


def test_a_checkpointed_job_comes_back_whole_without_its_caches():
    """Jobs, their segments and forecasts pickle as constructor calls (`pickled_by_fields`): every field comes back
    but the policy's caches, which are stamped with this process's predictor versions."""
    d, _ = make()
    t = d.submit("s", 300, 16, tool_category="search")
    d.grant()
    d.finish(t, SegmentOutcome(16, 0.5, 0.0, 300, "swapped", 316))
    d.submit("s", 400, 16)
    job = d.jobs["s"]
    d.pred.compute_s(job)
    assert job.policy_state
    back = pickle.loads(pickle.dumps(job))
    assert back.policy_state == {}
    assert asdict(back) == {**asdict(job), "policy_state": {}}
