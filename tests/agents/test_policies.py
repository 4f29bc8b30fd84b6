"""Hand-made cases where the right order / decision of each policy is known."""

import random

import pytest

from runtime.agents.costmodel import LLAMA3_8B_H100
from runtime.agents.job import Job, KVState, Phase, Segment
from runtime.agents.kv import KVAction, MemoryView
from runtime.agents.policy import (
    POLICIES,
    AstraeaConfig,
    PolicyContext,
    SegmentStats,
    check_servable,
    make_policy,
)
from runtime.agents.policy.astraea import Astraea
from runtime.agents.policy.continuum import Continuum, ContinuumConfig
from runtime.agents.predictor import Predictor


@pytest.fixture
def ctx():
    return PolicyContext(Predictor(LLAMA3_8B_H100.cost), LLAMA3_8B_H100)


def job(jid, arrival=0.0, ready=0.0, outputs=(100,), prompt=200, cats=None, times=None) -> Job:
    n = len(outputs)
    cats = cats or tuple(["tool"] * (n - 1) + [""])
    times = times or tuple([1.0] * (n - 1) + [0.0])
    segs = tuple(Segment(i, prompt, o, cats[i], times[i]) for i, o in enumerate(outputs))
    j = Job(jid, arrival, segs)
    j.phase, j.ready_since = Phase.READY, ready
    return j


def names(jobs):
    return [j.job_id for j in jobs]


def view(used=0, batch=10_000):
    return MemoryView(gpu_blocks=1000, gpu_used_blocks=used, cpu_free_blocks=10_000, block_size=16,
                      batch_tokens=batch, link_backlog_s=0.0)


def test_registry_and_unknown_policy(ctx):
    assert list(POLICIES) == ["fcfs", "sjf", "plas", "infercept", "continuum", "lamps", "astraea",
                             "clairvoyant"]
    with pytest.raises(ValueError, match="unknown policy 'lifo'"):
        make_policy("lifo", ctx)


def test_the_clairvoyant_bound_cannot_be_served():
    check_servable("astraea")
    check_servable("vllm", ("vllm",))
    with pytest.raises(ValueError, match="'clairvoyant' is a bound that reads jobs' future segments"):
        check_servable("clairvoyant")
    with pytest.raises(ValueError, match="unknown policy 'lifo'; choose one of vllm, fcfs"):
        check_servable("lifo", ("vllm",))


def test_clairvoyant_orders_by_the_true_remaining_work_of_the_whole_job(ctx):
    """A job whose current segment is short but whose later segments are long goes after a job that is nearly
    done; the decision at a tool call uses the call's true duration."""
    p = make_policy("clairvoyant", ctx)
    many = job("many", outputs=(10, 400, 400))  # short now, long later
    one = job("one", outputs=(200,))  # longer now, nothing after
    assert names(p.order([many, one], 0.0)) == ["one", "many"]
    assert names(make_policy("sjf", ctx).order([many, one], 0.0)) == ["many", "one"]  # the segment alone
    assert p.growth_tokens(one) == 200
    one.seg_generated = 150
    assert p.growth_tokens(one) == 50 and p.remaining_work_s(one) < p.remaining_work_s(many)
    short_call = job("short_call", outputs=(10, 10), times=(0.001, 0.0))
    long_call = job("long_call", outputs=(10, 10), times=(3600.0, 0.0))
    for j in (short_call, long_call):
        j.kv_tokens = 4000
    tight = view(used=950)  # above the watermark: the waste comparison decides
    assert p.on_tool_call(short_call, 0.0, tight).action is KVAction.PRESERVE
    assert p.on_tool_call(long_call, 0.0, tight).action is not KVAction.PRESERVE
    # the bound with parts of its knowledge taken away: without the segment count it sees no more than the
    # predictor's expected count (1 with no finished jobs yet); without true KV inputs, both calls look alike
    partial = make_policy("clairvoyant", ctx, {"true_count": False, "true_kv": False})
    many, one = job("many", outputs=(10, 400, 400)), job("one", outputs=(200,))
    assert names(partial.order([many, one], 0.0)) == ["many", "one"]
    assert (partial.on_tool_call(short_call, 0.0, tight).action
            is partial.on_tool_call(long_call, 0.0, tight).action)


def test_fcfs_serves_segments_in_submission_order_preempted_first(ctx):
    p = make_policy("fcfs", ctx)
    a, b, c = job("a", ready=3.0), job("b", ready=1.0), job("c", ready=2.0)
    assert names(p.order([a, b, c], 5.0)) == ["b", "c", "a"]
    a.preempted = True
    assert names(p.order([a, b, c], 5.0)) == ["a", "b", "c"]
    assert p.on_tool_call(a, 0.0, view()).action is KVAction.DISCARD


def test_sjf_uses_the_true_segment_length(ctx):
    p = make_policy("sjf", ctx)
    long, short = job("long", outputs=(500,)), job("short", outputs=(20,))
    assert names(p.order([long, short], 0.0)) == ["short", "long"]


def test_plas_least_attained_service_then_anti_starvation(ctx):
    p = make_policy("plas", ctx)
    hog, fresh = job("hog", ready=0.0), job("fresh", ready=5.0)
    hog.attained_s = 20.0
    assert names(p.order([hog, fresh], 6.0)) == ["fresh", "hog"]
    hog.waited_s = 1000.0  # starving: (W) / (T_program + T_call) >= beta
    assert names(p.order([hog, fresh], 6.0)) == ["hog", "fresh"]


def test_infercept_orders_by_job_arrival_and_minimises_waste(ctx):
    p = make_policy("infercept", ctx)
    old, new = job("old", arrival=0.0, ready=9.0), job("new", arrival=5.0, ready=6.0)
    assert names(p.order([new, old], 10.0)) == ["old", "new"]
    j = job("j", outputs=(10, 10), cats=("slow", ""), times=(30.0, 0.0))
    j.kv_tokens = 2000
    ctx.predictor.observe_api("slow", 30.0)
    assert p.on_tool_call(j, 0.0, view(used=10)).action is KVAction.SWAP  # even with memory to spare
    ctx.predictor.observe_api("fast", 1e-4)
    f = job("f", outputs=(10, 10), cats=("fast", ""), times=(1e-4, 0.0))
    f.kv_tokens = 2000
    assert p.on_tool_call(f, 0.0, view(used=990)).action is KVAction.PRESERVE


def test_continuum_pins_for_a_ttl_learned_from_the_tool_cdf(ctx):
    p = Continuum(ctx, ContinuumConfig(min_samples=5, offload=False))
    j = job("j", outputs=(10, 10), cats=("search", ""), times=(0.5, 0.0))
    j.kv_tokens = 4000
    assert p.on_tool_call(j, 0.0, view()).action is KVAction.DISCARD  # no samples yet: no pin
    for d in (0.1, 0.2, 0.2, 0.3, 0.3, 0.4):
        j.seg = 1
        p.on_tool_return(j, 0.0, d)
    j.seg = 0
    p._wait_mean = 2.0  # re-entering costs 2 s of queueing: pinning for 0.4 s pays off
    d = p.on_tool_call(j, 0.0, view())
    assert d.action is KVAction.PRESERVE and d.ttl_s == pytest.approx(0.4)
    pinned, plain, pre = job("pinned", arrival=5.0), job("plain", arrival=1.0), job("pre", arrival=9.0)
    pinned.kv, pre.preempted = KVState.PRESERVED, True
    assert names(p.order([plain, pinned, pre], 10.0)) == ["pre", "pinned", "plain"]


def test_continuum_offloads_what_it_does_not_pin_where_the_host_has_room(ctx):
    p = Continuum(ctx)  # no samples: no pin
    j = job("j", outputs=(10, 10), cats=("search", ""), times=(0.5, 0.0))
    j.kv_tokens = 4000
    roomy = view()
    full = MemoryView(gpu_blocks=1000, gpu_used_blocks=0, cpu_free_blocks=10, block_size=16, batch_tokens=0,
                      link_backlog_s=0.0)
    assert p.on_tool_call(j, 0.0, roomy).action is KVAction.SWAP
    assert p.on_tool_call(j, 0.0, full).action is KVAction.DISCARD  # 250 blocks do not fit in 10
    assert p.on_pin_expired(j, 0.0, roomy) is KVAction.SWAP
    j.kv, j.phase = KVState.PRESERVED, Phase.TOOL
    assert p.evict_candidates([j], 0.0, roomy, forced=True) == [(j, KVAction.SWAP)]
    assert p.evict_candidates([j], 0.0, roomy, forced=False) == []
    plain = Continuum(ctx, ContinuumConfig(offload=False))
    assert plain.on_pin_expired(j, 0.0, roomy) is KVAction.DISCARD


def test_astraea_demotes_compute_heavy_and_promotes_io_bound(ctx):
    p = Astraea(ctx, AstraeaConfig(num_queues=3, base_quota_tokens=100, quota_growth=2))
    j = job("j", outputs=(500, 10, 10, 10))
    p.on_segment_done(j, 0.0, SegmentStats(1.0, 0, 500))
    assert j.level == 1
    j.seg = 1
    p.on_segment_done(j, 0.0, SegmentStats(1.0, 0, 500))  # 500 > quota(1) = 200
    assert j.level == 2
    p.on_segment_done(j, 0.0, SegmentStats(1.0, 0, 10))  # yields to a tool within quota
    assert j.level == 1
    j.seg = 3
    p.on_segment_done(j, 0.0, SegmentStats(1.0, 0, 10))  # last segment: no promotion, it is not waiting on I/O
    assert j.level == 1


def test_astraea_strict_levels_then_hrrn_with_history(ctx):
    p = Astraea(ctx, AstraeaConfig(num_queues=2, aging_ratio=1e9))
    low = job("low", outputs=(10,))
    low.level = 1
    short, long = job("short", outputs=(20,)), job("long", outputs=(400,))
    # equal waits (1 s in the queue): the shorter segment has the higher response ratio
    assert names(p.order([low, long, short], 1.0)) == ["short", "long", "low"]
    long.waited_s = 60.0  # history: the long job has waited a minute over earlier segments
    assert names(p.order([low, long, short], 1.0)) == ["long", "short", "low"]


def test_astraea_ages_starving_jobs_of_every_lower_queue_to_q0(ctx):
    p = Astraea(ctx, AstraeaConfig(num_queues=3, aging_ratio=4.0))
    starved = job("starved", outputs=(50,))
    starved.level, starved.waited_s = 2, 1000.0
    mid = job("mid")
    mid.level = 1
    assert names(p.order([mid, starved], 0.0)) == ["starved", "mid"]
    assert starved.level == 0
    # a middle queue ages too: demoted once, a job would otherwise wait behind every Q0 job for as long as Q0 has
    # work (SWE mix at 4x load: the p99 tail was such jobs)
    mid.waited_s = 1000.0
    fresh = job("fresh")
    assert names(p.order([fresh, mid], 0.0)) == ["mid", "fresh"]
    assert mid.level == 0


def random_queues(seed, count=20):
    """Queues of ready jobs with many equal ranks: few distinct arrivals, waits, lengths and levels."""
    rng = random.Random(seed)
    for _ in range(count):
        queue = []
        for i in range(rng.randrange(0, 40)):
            j = job(f"j{i}", arrival=float(rng.randrange(5)), ready=float(rng.randrange(50)),
                    outputs=tuple(rng.choice((10, 200, 2000)) for _ in range(rng.randrange(1, 4))))
            j.level, j.waited_s = rng.randrange(3), float(rng.choice((0, 0, 30, 900)))
            j.attained_s, j.seg_generated = float(rng.choice((0, 0.5, 20))), rng.choice((0, 0, 5))
            queue.append(j)
        yield queue


@pytest.mark.parametrize("name", list(POLICIES))
def test_order_is_the_rank_order_with_ties_kept_in_queue_order(ctx, name):
    """`order` (Astraea's is a loop of its own that also ages jobs, LAMPS's sorts the starving apart) is exactly
    `rank`'s order, ties in the queue's order: the global queue ranks jobs one at a time with `key`, engines a whole
    queue with `order`."""
    p = make_policy(name, ctx)
    for queue in random_queues(7):
        ordered = p.order(queue, 60.0)
        assert ordered == sorted(queue, key=lambda j: p.rank(j, 60.0, p.wait_key))


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_groups_of_a_queue_sorted_one_after_another_are_its_order(ctx, name):
    """`order_groups` splits a queue into groups an engine sorts only when a pass reaches them, and of which it may
    sort only the part that fits: every job in one group, the groups' orders one after another the queue's order,
    and a part of a group sorted in the order the whole group has."""
    p = make_policy(name, ctx)
    rng = random.Random(3)
    for queue in random_queues(9):
        groups = list(p.order_groups(queue, 60.0))
        assert sorted(id(j) for g in groups for j in g) == sorted(map(id, queue))
        for g in groups:
            part = [j for j in g if rng.random() < 0.5]
            kept = {id(j) for j in part}
            assert p.order(part, 60.0) == [j for j in p.order(g, 60.0) if id(j) in kept]
        assert [j for g in groups for j in p.order(g, 60.0)] == p.order(queue, 60.0)


def test_astraea_ages_every_lower_queue_job_it_ranks_past_the_ratio(ctx):
    p = Astraea(ctx, AstraeaConfig(num_queues=3, aging_ratio=4.0))
    for queue in random_queues(8):
        expected = [0 if j.level > 0 and (j.waited_now(60.0) + p.t_proc(j)) / p.t_proc(j) > 4.0 else j.level
                    for j in queue]
        p.order(queue, 60.0)
        assert [j.level for j in queue] == expected


def test_astraea_kv_manager_watermark_and_eviction(ctx):
    p = Astraea(ctx, AstraeaConfig(high_watermark=0.5))
    ctx.predictor.observe_api("slow", 30.0)
    j = job("j", outputs=(10, 10), cats=("slow", ""), times=(30.0, 0.0))
    j.kv_tokens = 2000
    assert p.on_tool_call(j, 0.0, view(used=499)).action is KVAction.PRESERVE
    assert p.on_tool_call(j, 0.0, view(used=500)).action is KVAction.SWAP
    j.kv, j.phase, j.tool_started_s = KVState.PRESERVED, Phase.TOOL, 0.0
    assert [(x.job_id, a) for x, a in p.evict_candidates([j], 1.0, view(used=900), forced=False)] == [
        ("j", KVAction.SWAP)]
    back = job("back")  # tool already returned: keeping it is free unless a running segment needs room
    back.kv, back.kv_tokens = KVState.PRESERVED, 2000
    assert p.evict_candidates([back], 1.0, view(used=900), forced=False) == []
    assert len(p.evict_candidates([back], 1.0, view(used=900), forced=True)) == 1


def test_astraea_reserves_predicted_growth(ctx):
    p = Astraea(ctx)
    j = job("j", outputs=(300,))
    j.seg_generated = 100
    assert p.growth_tokens(j) == 200
    assert make_policy("fcfs", ctx).growth_tokens(j) == 0


def test_astraea_config_validation():
    with pytest.raises(ValueError, match="num_queues"):
        AstraeaConfig(num_queues=0)
    with pytest.raises(ValueError, match="aging_ratio"):
        AstraeaConfig(aging_ratio=1.0)


def test_config_overrides_are_typed_and_checked(ctx):
    from runtime.agents.policy import make_config

    cfg = make_config("astraea", {"high_watermark": "0.8", "num_queues": "2", "job_level_hrrn": "false"})
    assert cfg == AstraeaConfig(high_watermark=0.8, num_queues=2, job_level_hrrn=False)
    assert make_config("plas", {"thresholds_s": "1/2"}).thresholds_s == (1.0, 2.0)
    assert make_policy("astraea", ctx, {"num_queues": 2}).cfg.num_queues == 2
    with pytest.raises(ValueError, match="no field 'colour'"):
        make_config("astraea", {"colour": "1"})
    with pytest.raises(ValueError, match="field 'num_queues': cannot use 'x'"):
        make_config("astraea", {"num_queues": "x"})
    with pytest.raises(ValueError, match="'fcfs' has no configuration"):
        make_config("fcfs", {"a": "1"})
    with pytest.raises(ValueError, match="high_watermark must be in"):
        make_config("astraea", {"high_watermark": "1.5"})
    with pytest.raises(ValueError, match="thresholds_s must be strictly increasing"):
        make_config("plas", {"thresholds_s": "4/1"})


def test_the_service_refuses_a_bound_by_name(tmp_path):
    from pydantic import ValidationError

    from runtime.serving.config import ServeSettings

    (tmp_path / "config.json").write_text("{}")
    assert ServeSettings(model=str(tmp_path), policy="vllm").policy == "vllm"
    with pytest.raises(ValidationError, match="'clairvoyant' is a bound"):
        ServeSettings(model=str(tmp_path), policy="clairvoyant")


def test_lamps_ranks_by_the_memory_a_request_holds_over_time_including_its_call(ctx):
    """Equal segments; the one whose tool call is long holds its context through the call unless LAMPS predicts it
    is given up: it ranks behind the one whose call is short. A request waiting past the starvation bound goes
    first."""
    p = make_policy("lamps", ctx)
    for cat, seconds in (("slow", 5.0), ("fast", 0.005)):
        p.pred.observe_api(cat, seconds)
    slow = job("slow", outputs=(50, 10), cats=("slow", ""), prompt=3000)
    fast = job("fast", outputs=(50, 10), cats=("fast", ""), prompt=3000)
    alone = job("alone", outputs=(50,), prompt=3000)  # no call after it
    assert names(p.order([slow, fast, alone], 1.0)) == ["alone", "fast", "slow"]
    assert p.memory_time(slow) > p.memory_time(fast) > p.memory_time(alone) > 0
    slow.ready_since = -100.0  # waited past starvation_s (30 s)
    assert names(p.order([fast, alone, slow], 1.0))[0] == "slow"
    with pytest.raises(ValueError, match="starvation_s must be > 0"):
        make_policy("lamps", ctx, {"starvation_s": 0})
