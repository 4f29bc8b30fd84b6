"""What an engine can tell a cluster scheduler about itself, read from the engine's own outputs.

Two sources, both real: vLLM's per-iteration `SchedulerStats` (running and waiting requests, KV usage) and
`IterationStats` (output tokens), received through a stat-logger factory, and the policy plugin's KV log (JSONL
written in the engine-core process), which says for every job whether its KV is preserved, swapped or discarded
across its tool call - and changes when memory pressure or a TTL releases it later - and, with every record, what
the engine holds for jobs.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

# KV log event -> the job's KV state after it
STATE_AFTER = {"preserve": "preserved", "swap": "swapped", "discard": "discarded"}
OWN_CAUSES = ("pressure", "ttl")  # changes the engine makes on its own to the KV of a job in a tool call
CHANGES_KEPT = 4096  # a reader more than this many changes behind has missed some (they are hints, not state)
HOLDINGS_NONE = {"jobs": 0, "pinned_blocks": 0, "host_swap_blocks": 0}


@dataclass
class VllmLoad:
    """The latest iteration's view of vLLM's scheduler (zeros until the first iteration)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of the KV pool in use
    generated_tokens: int = 0  # output tokens since the engine started (vLLM's `vllm:generation_tokens`)


def load_logger_factory(load: VllmLoad):
    """A vLLM `StatLoggerFactory` whose loggers copy each iteration's scheduler stats into `load`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class LoadLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                load.running = scheduler_stats.num_running_reqs
                load.waiting = scheduler_stats.num_waiting_reqs
                load.kv_usage = scheduler_stats.kv_cache_usage
            if iteration_stats is not None:
                load.generated_tokens += iteration_stats.num_generation_tokens

        def log_engine_initialized(self):
            pass

    return LoadLogger


@dataclass
class KvLogTail:
    """Follows a KV log as the plugin appends to it: the changes the engine made on its own to KV it kept for a
    waiting job (released under pressure or by a TTL), numbered so a reader asks only for what it has not seen;
    what the engine holds for jobs; event counts."""

    path: Path
    holdings: dict = field(default_factory=lambda: dict(HOLDINGS_NONE))  # as of the latest record
    counts: Counter = field(default_factory=Counter)  # (event, cause) -> events seen
    changes: deque = field(default_factory=lambda: deque(maxlen=CHANGES_KEPT))  # (seq, job, seg, state, tokens)
    seq: int = 0  # number of the latest change
    _offset: int = 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind("\n") + 1]  # a line still being written is read next time
        self._offset += len(complete.encode())
        for line in complete.splitlines():
            rec = json.loads(line)
            self.counts[(rec["event"], rec["cause"])] += 1
            self.holdings = rec["holdings"]
            if rec["cause"] in OWN_CAUSES:
                self.seq += 1
                self.changes.append((self.seq, rec["job"], rec["seg"], STATE_AFTER[rec["event"]], rec["tokens"]))

    def changes_since(self, seq: int) -> list[tuple]:
        """Changes numbered after `seq` (all that are kept when `seq` is from before a restart)."""
        return [c for c in self.changes if c[0] > seq] if seq <= self.seq else list(self.changes)
