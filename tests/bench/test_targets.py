import json

from bench import targets


def _summary(policy, load, avg, p99):
    return {"policy": policy, "estimator": "oracle", "load": load, "avg_jct_s": avg, "p99_jct_s": p99}


def test_reference_load_and_verdicts(tmp_path):
    rows = []
    for load, fcfs in ((1, 10.0), (2, 20.0), (4, 40.0)):
        rows.append(_summary("fcfs", load, fcfs, fcfs * 2))
        rows.append(_summary("infercept", load, fcfs * 0.6, fcfs))
        rows.append(_summary("astraea", load, fcfs * (0.5 if load < 4 else 0.65), fcfs * 1.1))
    path = tmp_path / "jct_sim_x.json"
    path.write_text(json.dumps({"meta": {"command": "cmd"}, "summary": rows}))
    lines, misses = targets.check(path)
    assert lines[0].startswith("reference load 4 (fcfs avg JCT 4.00x")
    assert "PASS astraea avg JCT = 0.650x fcfs" in lines[1]
    assert "PASS astraea p99 JCT = 0.550x fcfs" in lines[2]
    assert any(line.startswith("MISS load 4") for line in lines)  # 26.0 s vs infercept 24.0 s
    assert misses == ["jct_sim_x: load 4: astraea 26.00 s vs best other infercept 24.00 s (1.083x)"]
    assert targets.main([str(path)]) == 0
    assert "infercept 24.00 s" in (tmp_path / "README.md").read_text()


def test_where_the_bound_was_run_astraea_is_judged_against_it_and_the_best_peer(tmp_path):
    rows = []
    for load, fcfs in ((1, 10.0), (4, 40.0)):
        rows += [dict(_summary("fcfs", load, fcfs, fcfs * 2), avg_excess_s=fcfs - 8.0),
                 dict(_summary("infercept", load, fcfs * 0.6, fcfs), avg_excess_s=fcfs * 0.6 - 8.0),
                 dict(_summary("lamps", load, fcfs * 0.7, fcfs * 0.9), avg_excess_s=fcfs * 0.7 - 8.0),
                 dict(_summary("astraea", load, fcfs * 0.5, fcfs * 1.05), avg_excess_s=fcfs * 0.5 - 8.0),
                 dict(_summary("clairvoyant", load, fcfs * 0.45, fcfs), avg_excess_s=fcfs * 0.45 - 8.0)]
    path = tmp_path / "jct_sim_x.json"
    path.write_text(json.dumps({"meta": {"command": "cmd"}, "summary": rows}))
    lines, misses = targets.check(path)
    # 5.0 vs 4.5 s: 1.111x the bound; p99 10.5 vs lamps' 9.0 s; at the reference load 4: excess 12 vs 16 s = 0.75x
    assert "MISS load 1: astraea avg JCT = 1.111x the clairvoyant bound's (5.00 vs 4.50 s; target <= 1.05)" in lines
    assert "MISS load 1: astraea p99 JCT = 1.167x the best peer's (lamps; target <= 1.10)" in lines
    assert ("PASS reference load 4: astraea avg excess JCT = 0.750x the best peer's (infercept: 12.00 vs 16.00 s; "
            "target <= 0.80)") in lines
    assert len(misses) == 4 and all(m.startswith("jct_sim_x: load") for m in misses)


def _real(policy, load, avg, p99, tps, sim):
    return {"policy": policy, "load": load, "seed": 0, "avg_jct_s": avg, "p99_jct_s": p99, "tokens_per_s": tps,
            "sim_avg_jct_s": sim, "sim_error": sim / avg - 1}


def test_real_engine_verdicts(tmp_path):
    rows = [_real("vllm", 1, 10.0, 20.0, 100.0, 10.5), _real("astraea", 1, 9.0, 18.0, 100.0, 9.5),
            _real("vllm", 4, 30.0, 60.0, 150.0, 33.0), _real("astraea", 4, 21.0, 66.0, 150.0, 26.0)]
    path = tmp_path / "jct_real_x.json"
    path.write_text(json.dumps({"meta": {"command": "cmd"}, "rows": rows}))
    lines, misses = targets.check_real(path)
    assert "PASS load 4: astraea avg JCT = 0.700x vllm (target <= 0.80)" in lines
    assert "MISS load 4: astraea p99 JCT = 1.100x vllm (target <= 1.0)" in lines
    assert misses == ["jct_real_x: load 4: astraea p99 JCT = 1.100x vllm (target <= 1.0)",
                      "jct_real_x: simulator vs engine, astraea load 4: 26.00 s vs 21.00 s (+23.8%, target within 15%)"]
    notools = tmp_path / "jct_real_y.json"
    notools.write_text(json.dumps({"meta": {"command": "cmd", "single_segment": True},
                                   "rows": [_real("vllm", 8, 5.0, 6.0, 200.0, 5.0),
                                            _real("astraea", 8, 5.0, 6.0, 190.0, 5.0)]}))
    lines, misses = targets.check_real(notools)
    assert lines[0] == "MISS no tool calls, load 8: astraea (plugin) output tokens/s = 0.950x vllm (target >= 0.97)"
    assert targets.main([str(path), str(notools)]) == 0


def test_real_engine_verdicts_take_the_mean_of_a_policys_replays(tmp_path):
    rows = [_real("vllm", 4, 30.0, 60.0, 150.0, 33.0)]
    for seed, avg in enumerate((16.0, 20.0, 21.0)):
        rows.append(dict(_real("astraea", 4, avg, 30.0 + seed, 150.0, 17.1), seed=seed))
    path = tmp_path / "jct_real_x.json"
    path.write_text(json.dumps({"meta": {"command": "cmd"}, "rows": rows}))
    lines, misses = targets.check_real(path)
    assert "PASS load 4: astraea avg JCT = 0.633x vllm (target <= 0.80)" in lines
    assert "PASS load 4: astraea p99 JCT = 0.517x vllm (target <= 1.0)" in lines
    assert ("PASS simulator vs engine, astraea load 4: 17.10 s vs 19.00 s (mean of 3 replays, 16.00-21.00 s) "
            "(-10.0%, target within 15%)") in lines
    assert misses == []


def test_river_verdicts(tmp_path):
    from bench.river import summarize

    def run(seed, river_psnr):
        psnr = {"bicubic": 33.0, "generic_other": 34.0, "generic_game": 35.0, "per_video": 35.5, "online": 35.2,
                "per_segment": 35.6, "river_first": 35.1, "river": river_psnr}
        train = {"per_segment": 100.0, "river": 40.0, "online": 50.0, "per_video": 10.0}
        return {"seed": seed, "prefetch_hit_top3": 0.85, "lookup_ms_p50": 2.0, "river_model_switches": 2,
                "earlier": {"finetunes": 3, "train_s": 45.0, "models": 3}, "methods": {
            m: {"psnr": [p, p], "ssim": [0.9, 0.9], "train_s": train.get(m, 0.0), "finetunes": 1}
            for m, p in psnr.items()}}

    river = tmp_path / "river.json"
    runs = [run(0, 35.95), run(1, 35.65)]
    river.write_text(json.dumps({"meta": {"command": "cmd"}, **summarize(runs), "runs": runs}))
    lines, misses = targets.check_river(river)
    assert lines[0] == "MISS river >= generic_other +1.81 dB: measured 1.80 +- 0.15 dB"
    assert lines[1] == "MISS river >= generic_game +1.00 dB: measured 0.80 +- 0.15 dB"
    assert lines[2] == "MISS river >= online +0.50 dB: measured 0.60 +- 0.15 dB"  # a win inside the spread
    assert lines[3] == "PASS river >= per_segment -0.30 dB: measured 0.20 +- 0.15 dB"
    assert lines[4] == "PASS river training s <= 0.5 x per_segment: measured 0.40 +- 0.00"
    assert lines[5] == "PASS prefetch top-3 hit >= 0.8: measured 0.85 +- 0.00"
    assert misses[0].startswith("river: river >= generic_other")
    lookup = tmp_path / "river_lookup.json"
    lookup.write_text(json.dumps({"meta": {"command": "cmd"}, "cost": {
        "10": {"models": 10, "ms_per_frame_p50": 2.0}, "1000": {"models": 1000, "ms_per_frame_p50": 6.0}}}))
    lines, misses = targets.check_river_lookup(lookup)
    assert misses == ["river_lookup: lookup + vote with 1000 models: 6.00 ms per frame p50 (target <= 5)"]
    assert targets.main([str(river), str(lookup)]) == 0
    page = (tmp_path / "README.md").read_text()
    assert "[retrieval, lookup cost](river_lookup.png)" in page and "- river_lookup: lookup + vote" in page


def test_river_client_and_stream_verdicts(tmp_path):
    client = tmp_path / "river_client.json"
    client.write_text(json.dumps({"meta": {"command": "cmd"}, "runtimes": {}, "sizes": {}, "summary": {
        "fps": 21.0, "frame_ms_p99": 55.0, "model": "4x16", "runtime": "compiled"}}))
    lines, misses = targets.check_river_client(client)
    assert lines[0].startswith("PASS River's player, model 4x16 (compiled): 21.0 frames/s")
    assert misses == ["river_client: decode + SR p99 55.0 ms per frame (target <= 50)"]
    stream = tmp_path / "river_stream.json"
    stream.write_text(json.dumps({"meta": {"command": "cmd"}, "rows": [], "stream": {
        "segments": 20, "http_5xx": 0, "server_ms_p99": 900.0, "lookup_ms_per_frame_p99": 25.0,
        "prefetch_hit_rate": 0.9, "stalls": 2, "prefetch_bytes": 10, "video_bytes": 100,
        "delivered_psnr_db": 33.0, "offline_psnr_db": 33.5}}))
    lines, misses = targets.check_river_stream(stream)
    assert [line[:4] for line in lines] == ["PASS", "PASS", "MISS", "PASS", "MISS", "PASS", "MISS"]
    assert misses[2] == "river_stream: delivered PSNR-Y -0.50 dB from River offline on the same segments (target " \
                        "within 0.3)"
    assert misses[1] == "river_stream: stalls 10% of segments (target <= 5%)"
    assert targets._checker(json.loads(client.read_text()))[0] is targets.check_river_client


def test_control_plane_verdicts(tmp_path):
    def level(callers: int, coalesced: float) -> dict:
        return {"concurrency": callers,
                "coalesced": {"segments_per_s": coalesced, "added_ms": {"p50": 2.0, "p99": 7.5}},
                "one_call_each": {"segments_per_s": 3000.0, "added_ms": {"p50": 1.0, "p99": 2.0}}}

    path = tmp_path / "control_plane.json"  # judged on the coalesced calls, which the ingress makes
    data = {"meta": {"command": "cmd"}, "shard_runs": [{"shards": 1, "levels": [level(64, 1500.0), level(16, 900.0)]},
                                                       {"shards": 2, "levels": [level(64, 2500.0)]}]}
    path.write_text(json.dumps(data))
    assert targets._checker(data)[0] is targets.check_control_plane  # not bench.service_load's, which has levels
    lines, misses = targets.check_control_plane(path)
    assert lines[0] == "PASS segments/s >= 2000 (best: 2 shard(s), 64 callers): 2500.0"  # the best shard count
    assert misses == ["control_plane: p99 added latency <= 5.0 ms at that level (64 callers, 2 shard(s)): 7.5"]
    # with open-loop levels, the latency is judged at the lowest offered rate that reaches the target rate, in the
    # shard count where it is lowest
    for run, p99_at_2000 in zip(data["shard_runs"], (40.0, 30.0), strict=True):
        run["offered"] = [{"offered_per_s": r, "segments_per_s": r - 10, "added_ms": {"p50": 1.0, "p99": p99}}
                          for r, p99 in ((500.0, 3.0), (2000.0, p99_at_2000), (4000.0, 900.0))]
    path.write_text(json.dumps(data))
    assert targets.check_control_plane(path)[1] == [
        "control_plane: p99 added latency <= 5.0 ms at 2000 segments/s offered (1990 served, 2 shard(s)): 30.0"]


def test_cluster_verdicts_average_seeds_and_ask_more_of_a_mixed_fleet(tmp_path):
    def rows(global_jcts):
        out = []
        for seed, g in enumerate(global_jcts):
            out += [{"mix": "swe", "engines": 8, "seed": seed, "arrangement": "global+astraea", "avg_jct_s": g},
                    {"mix": "swe", "engines": 8, "seed": seed, "arrangement": "ll+astraea", "avg_jct_s": 100.0},
                    {"mix": "swe", "engines": 8, "seed": seed, "arrangement": "rr+astraea", "avg_jct_s": 120.0}]
        return out

    cost = {"ready": 10, "p50_ms": 0.1}
    verdicts = {}
    for fleet, jcts in (("mixed", [85.0, 93.0]), ("h100", [101.5, 101.0])):
        path = tmp_path / f"jct_cluster_{fleet}.json"
        data = {"meta": {"command": "cmd", "fleet": fleet}, "rows": rows(jcts), "decision_cost": cost}
        path.write_text(json.dumps(data))
        assert targets._checker(data)[0] is targets.check_cluster
        verdicts[fleet] = targets.check_cluster(path)[0][0]
    assert verdicts["mixed"].startswith("PASS mixed fleet, swe, 8 engines: global+astraea avg JCT = 0.890x")
    assert verdicts["h100"].startswith("MISS h100 fleet, swe, 8 engines: global+astraea avg JCT = 1.012x")
