"""Agent workload traces: the public Parquet schema, its validation, and seeded generators.

One row per segment. The schema is a contract with other tools, so loading is strict about meaning
(consecutive segments, a tool after every non-last segment) but lenient about physical types that carry the
same values (int64 for int32, large_string for string), because pandas and other writers pick those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from runtime.agents.job import Job, Segment

SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("seg_index", pa.int32()),
        ("arrival_s", pa.float64()),
        ("prompt_tokens", pa.int32()),
        ("output_tokens", pa.int32()),
        ("api_category", pa.string()),
        ("api_time_s", pa.float64()),
    ]
)
_INT_COLS = ("seg_index", "prompt_tokens", "output_tokens")
_FLOAT_COLS = ("arrival_s", "api_time_s")
_STR_COLS = ("job_id", "api_category")
_MAX_ERRORS = 20


class TraceError(ValueError):
    """A trace that breaks the schema; `problems` lists every problem found (up to a cap)."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        more = "" if len(problems) < _MAX_ERRORS else f"\n  ... (stopped after {_MAX_ERRORS})"
        super().__init__(f"invalid trace {source}:\n  " + "\n  ".join(problems) + more)


def _type_ok(name: str, typ: pa.DataType) -> bool:
    if name in _INT_COLS:
        return pa.types.is_integer(typ)
    if name in _FLOAT_COLS:
        return pa.types.is_floating(typ) or pa.types.is_integer(typ)
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def validate(table: pa.Table, source: str = "<table>") -> pa.Table:
    """Check a trace table and return it cast to the canonical schema, sorted by job and segment."""
    problems: list[str] = []
    names = set(table.column_names)
    expected = set(SCHEMA.names)
    problems += [f"column '{c}': missing" for c in SCHEMA.names if c not in names]
    problems += [f"column '{c}': unexpected (the schema has {SCHEMA.names})" for c in table.column_names
                 if c not in expected]
    for f in SCHEMA:
        if f.name in names and not _type_ok(f.name, table.schema.field(f.name).type):
            problems.append(f"column '{f.name}': type {table.schema.field(f.name).type}, expected {f.type}")
    if problems:
        raise TraceError(source, problems)
    if table.num_rows == 0:
        raise TraceError(source, ["trace has no rows"])

    cols = {c: table.column(c).to_pylist() for c in SCHEMA.names}
    job_ids = cols["job_id"]

    def err(row: int, col: str, msg: str) -> None:
        if len(problems) < _MAX_ERRORS:
            job = job_ids[row] if job_ids[row] is not None else "?"
            problems.append(f"row {row} (job '{job}', column '{col}'): {msg}")

    for row in range(table.num_rows):
        for c in SCHEMA.names:
            v = cols[c][row]
            if v is None:
                err(row, c, "null value")
            elif c in _INT_COLS:
                if v < 0 or v > 2**31 - 1:
                    err(row, c, f"{v} out of range (0 .. 2^31-1)")
            elif c in _FLOAT_COLS and (not math.isfinite(v) or v < 0):
                err(row, c, f"{v} is not a finite non-negative number")
        if job_ids[row] == "":
            err(row, "job_id", "empty job id")
        if cols["output_tokens"][row] is not None and cols["output_tokens"][row] < 1:
            err(row, "output_tokens", "a segment must generate at least 1 token")
    if problems:
        raise TraceError(source, problems)

    by_job: dict[str, list[int]] = {}
    for row, j in enumerate(job_ids):
        by_job.setdefault(j, []).append(row)
    for rows in by_job.values():
        rows.sort(key=lambda r: cols["seg_index"][r])
        for k, row in enumerate(rows):
            if cols["seg_index"][row] != k:
                err(row, "seg_index", f"expected {k} (0-based, consecutive, unique within the job), "
                                      f"got {cols['seg_index'][row]}")
                break
        a0 = cols["arrival_s"][rows[0]]
        for row in rows[1:]:
            if cols["arrival_s"][row] != a0:
                err(row, "arrival_s", f"{cols['arrival_s'][row]} differs from the job's arrival {a0}")
        if cols["prompt_tokens"][rows[0]] < 1:
            err(rows[0], "prompt_tokens", "the first segment needs a prompt of at least 1 token")
        for row in rows[:-1]:
            if cols["api_category"][row] == "":
                err(row, "api_category", "empty on a segment that is not the job's last")
        last = rows[-1]
        if cols["api_category"][last] != "":
            err(last, "api_category", f"'{cols['api_category'][last]}' on the job's last segment (must be '')")
        if cols["api_time_s"][last] != 0.0:
            err(last, "api_time_s", f"{cols['api_time_s'][last]} on the job's last segment (must be 0.0)")
    if problems:
        raise TraceError(source, problems)

    out = table.select(SCHEMA.names).cast(SCHEMA)
    return out.sort_by([("arrival_s", "ascending"), ("job_id", "ascending"), ("seg_index", "ascending")])


def read_trace(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise TraceError(str(path), [f"not a readable Parquet file: {e}"]) from e
    return validate(table, str(path))


def write_trace(table: pa.Table, path: str | Path) -> None:
    table = validate(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def jobs_from_table(table: pa.Table, rate_scale: float = 1.0) -> list[Job]:
    """Build fresh `Job` objects; `rate_scale` s divides every arrival time by s (s=2 doubles the load)."""
    if not rate_scale > 0:
        raise ValueError(f"rate_scale must be > 0, got {rate_scale}")
    cols = {c: table.column(c).to_pylist() for c in SCHEMA.names}
    jobs: dict[str, list] = {}
    arrival: dict[str, float] = {}
    for i, jid in enumerate(cols["job_id"]):
        seg = Segment(cols["seg_index"][i], cols["prompt_tokens"][i], cols["output_tokens"][i],
                      cols["api_category"][i], cols["api_time_s"][i])
        jobs.setdefault(jid, []).append(seg)
        arrival[jid] = cols["arrival_s"][i] / rate_scale
    out = [Job(jid, arrival[jid], tuple(sorted(segs, key=lambda s: s.index))) for jid, segs in jobs.items()]
    out.sort(key=lambda j: (j.arrival_s, j.job_id))
    return out


# ---------------------------------------------------------------------------------------------- generators

@dataclass(frozen=True)
class ToolSpec:
    category: str
    mean_s: float
    std_s: float
    cap_s: float = 600.0
    log_mu: float | None = None  # when set, sample lognormal(log_mu, log_sigma) instead of by mean/std
    log_sigma: float = 0.0


@dataclass(frozen=True)
class JobProfile:
    """How one kind of agent job looks: how many tool calls, which tools, how many tokens."""

    name: str
    weight: float
    tools: tuple[tuple[ToolSpec, float], ...]  # (tool, probability) per call
    calls_mean: float
    calls_std: float
    calls_max: int
    initial_prompt: float  # mean tokens of segment 0's prompt
    tool_output: float  # mean tokens a tool call appends (next segment's prompt)
    output: float  # mean generated tokens per segment
    token_sigma: float = 0.5  # lognormal spread of token counts
    heavy_calls: bool = False  # calls drawn lognormal (a long tail of long programs), not normal
    context_max: int = 0  # > 0: a job ends with the segment that takes its context past this (its window is full)


def _infercept_profile(cat: str, mean: float, std: float, calls: float, context: float) -> JobProfile:
    # Table 1 gives the total context per request; we put half of it in the initial prompt and split the
    # rest evenly between generated text and tool returns (InferCept does not publish the split).
    return JobProfile(cat, 1.0, ((ToolSpec(cat, mean, std), 1.0),), calls, math.sqrt(calls), 64,
                      0.5 * context, 0.25 * context / calls, 0.25 * context / (calls + 1))


# Gap to the next call of a chat "program" (user think time) fitted to the vLLM router statistic: 86.5% within
# 1 s and 95.1% within 10 s gives a lognormal with mu=-4.6, sigma=4.17, capped at 60 s.
_CHAT_GAP = ToolSpec("user", 0.0, 0.0, cap_s=60.0, log_mu=-4.6, log_sigma=4.17)

# A person answering an agent: tens of seconds, with a long tail.
_HUMAN_REPLY = ToolSpec("human", 20.0, 40.0, cap_s=300.0)

MIXES: dict[str, tuple[JobProfile, ...]] = {
    "infercept": (
        _infercept_profile("math", 9e-5, 6e-5, 3.75, 1422),
        _infercept_profile("qa", 0.69, 0.17, 2.52, 1846),
        _infercept_profile("alfworld", 0.09, 0.014, 28.18, 2185),
        _infercept_profile("chatbot", 28.6, 15.6, 4.45, 753),
        _infercept_profile("image", 20.03, 7.8, 6.91, 1247),
        _infercept_profile("tts", 17.24, 7.6, 6.91, 1251),
    ),
    # Autellix BFCL v3: 10.75 calls (max 70), ~735 prefill / ~34 decode tokens per call; tool times from
    # Continuum's BFCL v4 web search (1.9 +- 2.1 s).
    "bfcl": (
        JobProfile("bfcl", 1.0, ((ToolSpec("web_search", 1.9, 2.1), 0.7), (ToolSpec("function", 0.4, 0.5), 0.3)),
                   10.75, 8.0, 70, 420.0, 30.0, 34.0),
    ),
    # Autellix ShareGPT multi-turn: 6.66 calls/program (max 80), ~256 prefill / ~277 decode tokens per call.
    "sharegpt": (
        JobProfile("sharegpt", 1.0, ((_CHAT_GAP, 1.0),), 6.66, 6.0, 80, 256.0, 256.0, 277.0),
    ),
    # Continuum SWE-bench: 10.9 +- 2.1 turns, tool time 0.93 +- 3.55 s (heavy tail), ~70k tokens processed
    # per program (sum of inputs), i.e. a context that grows from ~3k to ~12k tokens.
    "swe": (
        JobProfile("swe", 1.0, ((ToolSpec("read", 0.3, 0.9), 0.45), (ToolSpec("edit", 0.2, 0.4), 0.35),
                                (ToolSpec("test", 3.6, 7.0), 0.20)),
                   9.9, 2.1, 40, 3000.0, 700.0, 120.0, token_sigma=0.4),
    ),
    # A shape of our own, no paper's (issue 17 asks for one that no generator of a peer's workload makes): three
    # kinds of agent at once, so that job sizes span two orders of magnitude and no one kind dominates; turn counts
    # with a long tail (lognormal), which a mean-residual estimate underrates; human replies of tens of seconds
    # beside tools of a fraction of a second, so the right KV fate differs call by call; contexts that stop at a
    # window; and bursty arrivals (`BURSTY`), so the engine swings between idle and overload.
    "mixed": (
        JobProfile("coder", 0.3, ((ToolSpec("read", 0.3, 0.9), 0.5), (ToolSpec("test", 6.0, 12.0), 0.3),
                                  (ToolSpec("edit", 0.2, 0.4), 0.2)),
                   12.0, 15.0, 100, 4000.0, 900.0, 150.0, token_sigma=0.4, heavy_calls=True, context_max=24000),
        JobProfile("chat", 0.5, ((_HUMAN_REPLY, 1.0),), 3.0, 4.0, 40, 300.0, 120.0, 250.0, heavy_calls=True,
                   context_max=24000),
        JobProfile("research", 0.2, ((ToolSpec("web_search", 1.9, 2.1), 0.6), (ToolSpec("fetch", 4.0, 8.0), 0.4)),
                   20.0, 30.0, 150, 800.0, 700.0, 60.0, heavy_calls=True, context_max=24000),
    ),
}


# Mixes whose arrivals come in bursts (`_arrivals`), not as a Poisson stream.
BURSTY = frozenset({"mixed"})


def _arrivals(rng: np.random.Generator, jobs: int, rate: float, bursty: bool) -> np.ndarray:
    """Arrival times at `rate` jobs/s on average: Poisson, or on/off bursts (a two-state Markov-modulated Poisson
    process: 3x the rate for on periods of mean 30 / rate s, a third of it for off periods of mean 90 / rate s)."""
    if not bursty:
        return np.cumsum(rng.exponential(1.0 / rate, jobs))
    times, t, on = [], 0.0, True
    while len(times) < jobs:
        period_end = t + rng.exponential((30.0 if on else 90.0) / rate)
        r = rate * (3.0 if on else 1.0 / 3.0)
        while len(times) < jobs:
            t += rng.exponential(1.0 / r)
            if t > period_end:
                t = period_end
                break
            times.append(t)
        on = not on
    return np.array(times)


def _lognormal(rng: np.random.Generator, mean: float, std: float, size=None):
    if mean <= 0:
        return np.zeros(size) if size is not None else 0.0
    sigma2 = math.log(1.0 + (std / mean) ** 2)
    return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size)


def _tool_time(rng: np.random.Generator, tool: ToolSpec) -> float:
    if tool.log_mu is not None:
        return float(min(rng.lognormal(tool.log_mu, tool.log_sigma), tool.cap_s))
    return float(min(_lognormal(rng, tool.mean_s, tool.std_s), tool.cap_s))


def _tokens(rng: np.random.Generator, mean: float, sigma: float) -> int:
    return max(1, int(round(rng.lognormal(math.log(max(mean, 1.0)) - sigma * sigma / 2, sigma))))


def generate(mix: str, jobs: int, rate: float, seed: int) -> pa.Table:
    """A seeded trace: `jobs` jobs of `mix` with Poisson arrivals at `rate` jobs/s."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix '{mix}'; choose one of {sorted(MIXES)}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 jobs/s, got {rate}")
    rng = np.random.default_rng(seed)
    profiles = MIXES[mix]
    weights = np.array([p.weight for p in profiles], dtype=float)
    weights /= weights.sum()
    arrivals = _arrivals(rng, jobs, rate, mix in BURSTY)
    rows: dict[str, list] = {c: [] for c in SCHEMA.names}
    for j in range(jobs):
        prof = profiles[rng.choice(len(profiles), p=weights)]
        drawn = _lognormal(rng, prof.calls_mean, prof.calls_std) if prof.heavy_calls else rng.normal(
            prof.calls_mean, prof.calls_std)
        calls = int(np.clip(round(drawn), 1, prof.calls_max))
        tool_p = np.array([p for _, p in prof.tools])
        context = 0
        for k in range(calls + 1):
            prompt = prof.initial_prompt if k == 0 else prof.tool_output
            tool = prof.tools[rng.choice(len(prof.tools), p=tool_p / tool_p.sum())][0]
            rows["job_id"].append(f"{mix}-{seed}-{j:06d}")
            rows["seg_index"].append(k)
            rows["arrival_s"].append(float(arrivals[j]))
            rows["prompt_tokens"].append(_tokens(rng, prompt, prof.token_sigma))
            rows["output_tokens"].append(_tokens(rng, prof.output, prof.token_sigma))
            context += rows["prompt_tokens"][-1] + rows["output_tokens"][-1]
            last = k == calls or 0 < prof.context_max <= context
            rows["api_category"].append("" if last else tool.category)
            rows["api_time_s"].append(0.0 if last else _tool_time(rng, tool))
            if last:
                break
    return pa.table(rows, schema=SCHEMA)
