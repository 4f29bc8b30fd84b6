"""Per-run summary rows: the JSON row schema every JCT benchmark (simulated, real, HTTP) shares."""

from __future__ import annotations

import numpy as np

from runtime.agents.costmodel import DeploymentProfile
from runtime.agents.job import Job
from runtime.agents.sim import SimResult, simulate

ROW_FIELDS = ("policy", "load", "seed", "jobs", "avg_jct_s", "p50_jct_s", "p90_jct_s", "p99_jct_s",
              "throughput_jobs_s", "kv_waste_frac", "recompute_frac", "preserve", "swap", "discard")


def jct_summary(jcts: np.ndarray) -> dict[str, float]:
    return {
        "avg_jct_s": float(np.mean(jcts)),
        "p50_jct_s": float(np.percentile(jcts, 50)),
        "p90_jct_s": float(np.percentile(jcts, 90)),
        "p99_jct_s": float(np.percentile(jcts, 99)),
    }


def alone_s(jobs: list[Job], profile: DeploymentProfile) -> dict[str, float]:
    """Each job's completion time alone on an idle engine of `profile` (its tool time plus its compute at batch
    1, KV kept across its calls), simulated: what no scheduler can shorten. JCT minus this is the excess a
    policy controls; tool time dominates agent mixes, so plain JCT ratios hide how much of it a policy removes."""
    out = {}
    for j in jobs:
        alone = Job(j.job_id, 0.0, j.segments)
        out[j.job_id] = simulate([alone], profile, "astraea").jobs[0].jct_s
    return out


def summarize(result: SimResult, *, load: float, seed: int, alone: dict[str, float] | None = None) -> dict:
    """One benchmark row. kv_waste_frac: share of the KV capacity x makespan held by idle (preserved) KV;
    recompute_frac: share of prefilled tokens that had been computed before (discard / preemption); with each
    job's time `alone` (`alone_s`), the excess JCT over it (avg, p99)."""
    jcts = np.array([j.jct_s for j in result.jobs])
    c = result.engines
    prefill = sum(e.prefill_tokens for e in c)
    row = {"policy": result.policy, "load": load, "seed": seed, "jobs": len(result.jobs), **jct_summary(jcts)}
    if alone is not None:
        excess = jcts - np.array([alone[j.job_id] for j in result.jobs])
        row["avg_excess_s"], row["p99_excess_s"] = float(np.mean(excess)), float(np.percentile(excess, 99))
    row["throughput_jobs_s"] = len(result.jobs) / result.makespan_s if result.makespan_s > 0 else 0.0
    row["kv_waste_frac"] = (sum(e.idle_kv_token_s for e in c) / (result.gpu_kv_tokens * result.makespan_s)
                            if result.makespan_s > 0 else 0.0)
    row["recompute_frac"] = sum(e.recompute_tokens for e in c) / prefill if prefill else 0.0
    row["preserve"] = sum(e.preserve for e in c)
    row["swap"] = sum(e.swap for e in c)
    row["discard"] = sum(e.discard for e in c)
    row["preemptions"] = sum(e.preemptions for e in c)
    row["sim_wall_s"] = result.wall_s
    return row
