"""Check the issues' targets against committed benchmark results and write bench/results/README.md.

    python -m bench.targets bench/results/jct_sim_*.json bench/results/jct_real_*.json bench/results/river*.json

jct_sim files (oracle estimator rows): the reference load is the lightest load at which fcfs's average JCT is 3-5x
its light-load value (else the load closest to that window); there it checks astraea avg <= 0.70x fcfs and p99 <=
fcfs p99; at every load it checks that astraea beats every peer (not the sjf and clairvoyant bounds); where the
clairvoyant bound was run, at every load astraea avg <= 1.05x the bound's and p99 <= 1.10x the best peer's, and at
the reference load astraea's average excess JCT <= 0.8x the best peer's (issue 17). peers
(bench.peers): each peer within 1.5x of its own paper's headline.
jct_real files (real vLLM; a policy's replays at one load, its --seeds, averaged): at the heaviest load astraea avg
<= 0.80x unmodified vllm and p99 not worse; the simulated average JCT within 15% of the measured one; on a run
without tool calls (--single-segment), astraea's output tokens/s >= 0.97x vllm's at every load (and fcfs through the
plugin, which isolates its overhead). river (bench.river): the targets bench.river judges (PSNR margins over each
baseline beyond the seeds' spread, training seconds <= 0.5x per_segment, prefetch top-3 hit >= 0.8); river_headroom:
whether any setting's per-segment fine-tune reaches generic_game + 1.0 dB; river_client: the player at >= 20
frames/s of 720p with decode + SR p99 <= 50 ms; river_stream: server time per segment p99 <= 1 s, lookup + vote p99
<= 20 ms per frame, 0 5xx, prefetch hit >= 0.85, stalls <= 5%, prefetch bytes <= 25% of video bytes; river_lookup:
lookup + vote <= 5 ms per frame (p50) with >= 1,000 models. service_load (bench.service_load): 0 5xx, 0 hung
requests and 0 connection errors at every concurrency level, and a new session answered within 1 s after the sweep.
vs_vllm_server (bench.vs_vllm_server): under memory pressure the drop-in plugin and the Ray runtime <= 0.70x the
average JCT of the stock server configured like ours, p99 not worse; without tools the plugin >= 0.97x its output
tokens/s while requests wait for a slot; the Ray runtime within 10% of the plugin. control_plane
(bench.control_plane): the GlobalScheduler actor with 1,000 simulated engines and 100,000 sessions >= 2,000
segments/s with p99 added latency <= 5 ms (at the best count of scheduler shards). sim_speed (bench.sim_speed):
every policy's run of a 2,000-job trace at the heaviest load <= 20 s wall. It reports what it finds, wins and losses
alike.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.jct_cluster import BEST_KIND, BOUND

OTHERS = ("fcfs", "plas", "infercept", "continuum", "lamps")  # the peers; sjf and clairvoyant are bounds


def check(path: Path) -> tuple[list[str], list[str]]:
    data = json.loads(path.read_text())
    agg = [a for a in data["summary"] if a["estimator"] == "oracle"]
    by = {(a["policy"], a["load"]): a for a in agg}
    loads = sorted({a["load"] for a in agg})
    light = by[("fcfs", loads[0])]["avg_jct_s"]
    # fcfs often jumps straight past the window (a cliff when its prefix cache starts thrashing): then the load
    # whose blow-up is closest to 3-5x is the reference, not simply the heaviest one.
    ref = min(loads, key=lambda ld: (max(3.0 - by[("fcfs", ld)]["avg_jct_s"] / light,
                                         by[("fcfs", ld)]["avg_jct_s"] / light - 5.0, 0.0), ld))
    fcfs, ast = by[("fcfs", ref)], by[("astraea", ref)]
    lines, misses = [], []
    ratio, p99r = ast["avg_jct_s"] / fcfs["avg_jct_s"], ast["p99_jct_s"] / fcfs["p99_jct_s"]
    blowup = fcfs["avg_jct_s"] / light
    lines.append(f"reference load {ref:g} (fcfs avg JCT {blowup:.2f}x its light-load value)")
    for ok, text in ((ratio <= 0.70, f"astraea avg JCT = {ratio:.3f}x fcfs (target <= 0.70)"),
                     (p99r <= 1.0, f"astraea p99 JCT = {p99r:.3f}x fcfs (target <= 1.0)")):
        lines.append(("PASS " if ok else "MISS ") + text)
        if not ok:
            misses.append(f"{path.stem}: {text}")
    for ld in loads:
        a = by[("astraea", ld)]["avg_jct_s"]
        best = min((by[(p, ld)]["avg_jct_s"], p) for p in OTHERS if (p, ld) in by)
        margin = a / best[0]
        ok = a < best[0]
        text = f"load {ld:g}: astraea {a:.2f} s vs best other {best[1]} {best[0]:.2f} s ({margin:.3f}x)"
        lines.append(("PASS " if ok else ("TIE  " if margin < 1.005 else "MISS ")) + text)
        if not ok:
            misses.append(f"{path.stem}: {text}")
    if ("clairvoyant", ref) in by:
        bound_lines, bound_misses = _verdicts(path, _against_the_bound(by, loads, ref))
        lines, misses = lines + bound_lines, misses + bound_misses
    return lines, misses


def _against_the_bound(by: dict, loads: list[float], ref: float) -> list[tuple[bool, str]]:
    """Issue 17's targets, judged where the clairvoyant bound was run: astraea's average JCT within 5% of the
    bound's and its p99 within 10% of the best peer's at every load; at the reference load its excess JCT (the part
    a scheduler controls) <= 0.8x the best peer's."""
    checks = []
    for ld in loads:
        ast, bound = by[("astraea", ld)], by[("clairvoyant", ld)]
        p99 = min((by[(p, ld)]["p99_jct_s"], p) for p in OTHERS if (p, ld) in by)
        checks.append((ast["avg_jct_s"] <= 1.05 * bound["avg_jct_s"],
                       f"load {ld:g}: astraea avg JCT = {ast['avg_jct_s'] / bound['avg_jct_s']:.3f}x the clairvoyant "
                       f"bound's ({ast['avg_jct_s']:.2f} vs {bound['avg_jct_s']:.2f} s; target <= 1.05)"))
        checks.append((ast["p99_jct_s"] <= 1.10 * p99[0],
                       f"load {ld:g}: astraea p99 JCT = {ast['p99_jct_s'] / p99[0]:.3f}x the best peer's ({p99[1]}; "
                       "target <= 1.10)"))
    ast = by[("astraea", ref)]
    if "avg_excess_s" in ast:
        best = min((by[(p, ref)]["avg_excess_s"], p) for p in OTHERS if (p, ref) in by)
        checks.append((ast["avg_excess_s"] <= 0.8 * best[0],
                       f"reference load {ref:g}: astraea avg excess JCT = {ast['avg_excess_s'] / best[0]:.3f}x the "
                       f"best peer's ({best[1]}: {ast['avg_excess_s']:.2f} vs {best[0]:.2f} s; target <= 0.80)"))
    return checks


def replay_means(rows: list[dict]) -> dict[tuple[str, float], dict]:
    """One row per (policy, load): the mean over its replays (bench.jct_real's --seeds repeat a replay, because
    one replay of an overloaded engine is noisy: astraea at load 4 on infercept24 measured 17.5-20.7 s average
    JCT in five replays of one hour), with `replays` and the range of their average JCTs. The simulator's figure
    is the same for every replay, so it is compared with the mean."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["load"]), []).append(r)
    means = {}
    for (policy, load), group in groups.items():
        avgs = [r["avg_jct_s"] for r in group]
        m = {"policy": policy, "load": load, "replays": len(group), "avg_range": (min(avgs), max(avgs))}
        for field in ("avg_jct_s", "p99_jct_s", "tokens_per_s"):
            m[field] = sum(r[field] for r in group) / len(group)
        if "http_errors" in group[0]:
            m["http_errors"] = sum(r["http_errors"] for r in group)
        if "sim_avg_jct_s" in group[0]:
            m["sim_avg_jct_s"] = group[0]["sim_avg_jct_s"]
            m["sim_error"] = m["sim_avg_jct_s"] / m["avg_jct_s"] - 1.0
        means[(policy, load)] = m
    return means


def check_real(path: Path) -> tuple[list[str], list[str]]:
    data = json.loads(path.read_text())
    by = replay_means(data["rows"])
    rows = list(by.values())
    loads = sorted({r["load"] for r in rows})
    checks = []
    if data["meta"].get("single_segment"):
        # fcfs through the plugin schedules like vLLM itself: its ratio is the plugin's overhead alone
        for ld in loads:
            for policy in ("fcfs", "astraea"):
                if ("vllm", ld) in by and (policy, ld) in by:
                    ratio = by[(policy, ld)]["tokens_per_s"] / by[("vllm", ld)]["tokens_per_s"]
                    checks.append((ratio >= 0.97, f"no tool calls, load {ld:g}: {policy} (plugin) output tokens/s = "
                                                  f"{ratio:.3f}x vllm (target >= 0.97)"))
    else:
        heavy = loads[-1]
        v, a = by[("vllm", heavy)], by[("astraea", heavy)]
        ratio, p99r = a["avg_jct_s"] / v["avg_jct_s"], a["p99_jct_s"] / v["p99_jct_s"]
        checks += [(ratio <= 0.80, f"load {heavy:g}: astraea avg JCT = {ratio:.3f}x vllm (target <= 0.80)"),
                   (p99r <= 1.0, f"load {heavy:g}: astraea p99 JCT = {p99r:.3f}x vllm (target <= 1.0)")]
    for r in sorted(rows, key=lambda r: (r["load"], r["policy"])):
        if "http_errors" in r:
            checks.append((r["http_errors"] == 0, f"{r['policy']} load {r['load']:g}: {r['http_errors']} failed HTTP "
                                                  f"calls (target 0)"))
        if "sim_error" in r:
            lo, hi = r["avg_range"]
            measured = (f"{r['avg_jct_s']:.2f} s" if r["replays"] == 1 else
                        f"{r['avg_jct_s']:.2f} s (mean of {r['replays']} replays, {lo:.2f}-{hi:.2f} s)")
            checks.append((abs(r["sim_error"]) <= 0.15,
                           f"simulator vs engine, {r['policy']} load {r['load']:g}: {r['sim_avg_jct_s']:.2f} s vs "
                           f"{measured} ({r['sim_error']:+.1%}, target within 15%)"))
    return _verdicts(path, checks)


def check_river(path: Path) -> tuple[list[str], list[str]]:
    """bench.river judged its targets itself (margins beyond the seeds' spread); this lists them."""
    from bench.river import target_verdicts

    return _verdicts(path, target_verdicts(json.loads(path.read_text())))


def check_river_headroom(path: Path) -> tuple[list[str], list[str]]:
    """Whether any setting lets a segment's own fine-tune reach generic_game + 1.0 dB, in and out of the client's
    real-time budget (50 ms per 720p frame here): the evidence issue 14's fallback target rests on."""
    settings = json.loads(path.read_text())["settings"]

    def best(rows):
        return max(rows, key=lambda r: max(b["gain_vs_game_db"] for b in r["budgets"].values()), default=None)

    checks = []
    for label, rows in (("any setting", settings),
                        ("within 50 ms per frame", [r for r in settings if r["client_ms_per_frame"] <= 50])):
        r = best(rows)
        if r is None:
            checks.append((False, f"{label}: no setting measured"))
            continue
        gain = max(b["gain_vs_game_db"] for b in r["budgets"].values())
        checks.append((gain >= 1.0, f"{label}: best per-segment fine-tune {r['name']} gains {gain:+.2f} dB over "
                                    f"generic_game (River's target needs >= +1.0)"))
    return _verdicts(path, checks)


def check_river_lookup(path: Path) -> tuple[list[str], list[str]]:
    cost = json.loads(path.read_text())["cost"]
    checks = [(c["ms_per_frame_p50"] <= 5.0, f"lookup + vote with {c['models']} models: {c['ms_per_frame_p50']:.2f} ms "
                                             f"per frame p50 (target <= 5)")
              for c in cost.values() if c["models"] >= 1000]
    return _verdicts(path, checks)


def check_cluster(path: Path) -> tuple[list[str], list[str]]:
    """bench.jct_cluster against issue 18: global scheduling's average JCT over the best per-engine arrangement's,
    seed by seed, then averaged: <= 0.90x where the fleet is imbalanced (engines of different speed or KV room),
    <= 1.01x on a fleet of one kind."""
    data = json.loads(path.read_text())
    rows, checks = data["rows"], []
    fleet = data["meta"].get("fleet", "h100")
    limit = 1.01 if fleet == "h100" else 0.90
    for mix, n in sorted({(r["mix"], r["engines"]) for r in rows}):
        ratios, floors, uniform = [], [], []  # floors: the no-contention bound (--bound) over the same best; uniform:
        # the global queue on the fleet made all of its best kind (--best-kind), over the same best
        for seed in sorted({r["seed"] for r in rows}):
            group = {r["arrangement"]: r["avg_jct_s"] for r in rows
                     if (r["mix"], r["engines"], r["seed"]) == (mix, n, seed)}
            per_engine = [v for a, v in group.items() if a not in ("global+astraea", BEST_KIND, BOUND)]
            if "global+astraea" in group and per_engine:
                ratios.append(group["global+astraea"] / min(per_engine))
                if BOUND in group:
                    floors.append(group[BOUND] / min(per_engine))
                if BEST_KIND in group:
                    uniform.append(group[BEST_KIND] / min(per_engine))
        if ratios:
            mean = sum(ratios) / len(ratios)
            seeds = ", ".join(f"{r:.3f}" for r in ratios)
            floor = f"; no arrangement can go below {sum(floors) / len(floors):.3f}x" if floors else ""
            if uniform:
                floor += (f"; with every engine of the fleet's best kind the global queue is "
                          f"{sum(uniform) / len(uniform):.3f}x")
            checks.append((mean <= limit, f"{fleet} fleet, {mix}, {n} engines: global+astraea avg JCT = {mean:.3f}x "
                                          f"the best per-engine arrangement (seeds {seeds}; target <= {limit}{floor})"))
    c = data["decision_cost"]
    checks.append((c["p50_ms"] <= 1.0, f"decision cost with {c['ready']} ready segments: {c['p50_ms']:.2f} ms per "
                                       f"dispatch p50 (target <= 1)"))
    return _verdicts(path, checks)


def check_river_stream(path: Path) -> tuple[list[str], list[str]]:
    s = json.loads(path.read_text())["stream"]
    stall_share, prefetch_share = s["stalls"] / s["segments"], s["prefetch_bytes"] / s["video_bytes"]
    checks = [(s["http_5xx"] == 0, f"{s['http_5xx']} HTTP 5xx answers over {s['segments']} segments (target 0)"),
              (s["server_ms_p99"] <= 1000.0, f"server time per 1-s segment p99 {s['server_ms_p99']:.0f} ms "
                                             f"(target <= 1000)"),
              (s["lookup_ms_per_frame_p99"] <= 20.0, f"lookup + vote p99 {s['lookup_ms_per_frame_p99']:.1f} ms per "
                                                     f"frame in the service (target <= 20)"),
              (s["prefetch_hit_rate"] >= 0.85, f"prefetch hit {s['prefetch_hit_rate']:.2f} (target >= 0.85)"),
              (stall_share <= 0.05, f"stalls {stall_share:.0%} of segments (target <= 5%)"),
              (prefetch_share <= 0.25, f"prefetch bytes {prefetch_share:.0%} of video bytes (target <= 25%)")]
    if "offline_psnr_db" in s:
        gap = s["delivered_psnr_db"] - s["offline_psnr_db"]
        checks.append((gap >= -0.3, f"delivered PSNR-Y {gap:+.2f} dB from River offline on the same segments "
                                    f"(target within 0.3)"))
    return _verdicts(path, checks)


def check_river_client(path: Path) -> tuple[list[str], list[str]]:
    s = json.loads(path.read_text())["summary"]
    checks = [(s["fps"] >= 20.0, f"River's player, model {s['model']} ({s['runtime']}): {s['fps']:.1f} frames/s at "
                                 f"720p (target >= 20)"),
              (s["frame_ms_p99"] <= 50.0, f"decode + SR p99 {s['frame_ms_p99']:.1f} ms per frame (target <= 50)")]
    return _verdicts(path, checks)


def check_vs_vllm_server(path: Path) -> tuple[list[str], list[str]]:
    """Under memory pressure (live contexts >= 2x the pool on (b)) the drop-in plugin (c) and the Ray runtime (d)
    <= 0.70x the average JCT of the stock server configured like ours (b), p99 not worse; without tool calls
    (c) >= 0.97x (b)'s output tokens/s; (d) within 10% of (c)'s average JCT everywhere."""
    from bench.vs_vllm_server import notool_summary

    rows = json.loads(path.read_text())["rows"]
    at = {(r["server"], r["pressure"], r["load"], r["tools"]): r for r in rows if r["tools"]}
    checks = []
    notool = notool_summary(rows)
    if "stock_like_ours" in notool and "drop_in" in notool:
        b, c = notool["stock_like_ours"], notool["drop_in"]
        if b["saturated"] and c["saturated"]:
            ratio = c["saturated"] / b["saturated"]
            checks.append((ratio >= 0.97, f"no tools, load {c['load']:g}: drop-in output tokens/s while requests "
                                          f"wait = {ratio:.3f}x (b) (medians of {c['rounds']} and {b['rounds']} "
                                          f"rounds; target >= 0.97)"))
        else:
            checks.append((False, f"no tools, load {c['load']:g}: drop-in output tokens/s not measured: requests "
                                   f"never waited for a slot (raise --notool-load)"))
    for (server, pressure, load, _), b in sorted(at.items(), key=lambda kv: kv[0][1:]):
        if server != "stock_like_ours":
            continue
        where = f"pressure {pressure:g} (live {b['live_pressure']:.2f}x), load {load:g}"
        c, d = at.get(("drop_in", pressure, load, True)), at.get(("ray", pressure, load, True))
        if b["live_pressure"] >= 2.0:
            for name, r in (("drop-in (c)", c), ("Ray runtime (d)", d)):
                if r:
                    avg, p99 = r["avg_jct_s"] / b["avg_jct_s"], r["p99_jct_s"] / b["p99_jct_s"]
                    checks.append((avg <= 0.70, f"{where}: {name} avg JCT = {avg:.3f}x (b) (target <= 0.70)"))
                    checks.append((p99 <= 1.0, f"{where}: {name} p99 JCT = {p99:.3f}x (b) (target <= 1.0)"))
        if c and d:
            over = d["avg_jct_s"] / c["avg_jct_s"]
            checks.append((over <= 1.10, f"{where}: Ray runtime avg JCT = {over:.3f}x drop-in (target <= 1.10)"))
    return _verdicts(path, checks)


def check_service_load(path: Path) -> tuple[list[str], list[str]]:
    data = json.loads(path.read_text())
    checks = [(r["http_5xx"] == 0 and r["hung"] == 0 and r["connection_errors"] == 0,
               f"{r['clients']} clients: {r['http_5xx']} 5xx, {r['hung']} hung, {r['connection_errors']} connection "
               f"errors (target 0); {r['segments_per_s']:.2f} segments/s, added p99 {r['added_p99_s']:.3f} s")
              for r in data["levels"]]
    checks.append((data["after_sweep_s"] <= 1.0, f"a new session after the sweep answered in "
                                                 f"{data['after_sweep_s']:.3f} s (target <= 1)"))
    return _verdicts(path, checks)


def check_control_plane(path: Path) -> tuple[list[str], list[str]]:
    """bench.control_plane: the scheduler's own capacity (issue 18), as the benchmark judged it."""
    from bench.control_plane import targets

    data = json.loads(path.read_text())
    return _verdicts(path, [(t["met"], f"{t['name']}: {t['value']:.1f}") for t in targets(data)])


def check_peers(path: Path) -> tuple[list[str], list[str]]:
    """bench.peers: each peer within 1.5x of its published headline (a fidelity check, not a goal of ours)."""
    from bench.peers import _ratio, room_label

    checks = [(c["far_off"] is False, f"{c['peer']} vs {c['baseline']} on {c['mix']} ({c['measure']}, KV room "
                                      f"{room_label(c)}): {_ratio(c['ours'])} (published {c['published']})")
              for c in json.loads(path.read_text())["checks"]]  # not measured (far_off None) is a miss too
    return _verdicts(path, checks)


def check_sim_speed(path: Path) -> tuple[list[str], list[str]]:
    """bench.sim_speed: every policy's run of the long trace within the simulator's time target (issue 17)."""
    data = json.loads(path.read_text())
    return _verdicts(path, [(t["met"], t["name"]) for t in data["targets"]])


def _verdicts(path: Path, checks: list[tuple[bool, str]]) -> tuple[list[str], list[str]]:
    return ([("PASS " if ok else "MISS ") + text for ok, text in checks],
            [f"{path.stem}: {text}" for ok, text in checks if not ok])


def _checker(data: dict):
    if "checks" in data:
        return check_peers, "[average JCT vs load, peer and baseline]({stem}.png)"
    if "timings" in data:
        return check_sim_speed, "[wall per policy]({stem}.png)"
    if "shard_runs" in data:
        return check_control_plane, "[segments/s and added latency vs callers]({stem}.png)"
    if "levels" in data:
        return check_service_load, "[throughput and added latency vs clients]({stem}.png)"
    if "runtimes" in data:
        return check_river_client, "[fps per runtime, latency vs model size]({stem}.png), [still]({stem}_still.png)"
    if "stream" in data:
        return check_river_stream, "[delivered PSNR, server time]({stem}.png)"
    if "decision_cost" in data:
        return check_cluster, "[average JCT per arrangement]({stem}.png)"
    if "comparison" in data:
        return check_vs_vllm_server, "[average JCT vs KV pressure, no-tool throughput]({stem}.png)"
    if "summary" in data:
        return check, "[JCT vs load]({stem}_jct_vs_load.png), [CDF]({stem}_cdf.png)"
    if "rows" in data:
        return check_real, "[JCT vs load]({stem}_jct_vs_load.png), [CDF]({stem}_cdf.png)"
    if "methods" in data:
        return check_river, "[PSNR by method, per segment, training seconds]({stem}.png)"
    if "settings" in data:
        return check_river_headroom, "[gain vs budget, quality vs client cost]({stem}.png)"
    return check_river_lookup, "[retrieval, lookup cost]({stem}.png)"


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        raise SystemExit("give one or more benchmark result files")
    out = ["# Benchmark results", "",
           "`jct_sim_*` come from `make bench` (`python -m bench.reproduce`, the simulator); `jct_real_*` from",
           "`make bench-real` (real vLLM on this machine's CPU, the `small` model); `jct_http_*` and `jct_cluster`",
           "from `make bench-http` (the served agent API on real vLLM; cluster arrangements in the simulator);",
           "`river*` from `make bench-river` (River on real Freedoom video); `service_load` from `make bench-load`",
           "(the served API under a concurrency sweep); `vs_vllm_server` from `make bench-vs-vllm` (vLLM's own",
           "server against the drop-in plugin and the Ray runtime); `peers` from `make bench` (each peer against",
           "its own paper's baseline and headline, in the simulator); `control_plane` from",
           "`make bench-control-plane` (the scheduler actor alone, with a simulated fleet); `sim_speed` from",
           "`make bench` (the simulator's own wall time). Each table's first",
           "line is its exact command.",
           "This page is written by `python -m bench.targets` from the JSON files.", ""]
    all_misses = []
    for p in paths:
        data = json.loads(p.read_text())
        checker, plots = _checker(data)
        lines, misses = checker(p)
        all_misses += misses
        out += [f"## {p.stem}", "", f"`{data['meta']['command']}`", "",
                f"Table: [{p.with_suffix('.md').name}]({p.with_suffix('.md').name}), plots: "
                + plots.format(stem=p.stem), ""]
        out += [f"- {line}" for line in lines] + [""]
    out += ["## Targets not met", ""]
    out += [f"- {m}" for m in all_misses] if all_misses else ["- none"]
    text = "\n".join(out) + "\n"
    dest = paths[0].parent / "README.md"
    dest.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
