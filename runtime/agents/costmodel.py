"""Engine iteration time as a function of the batch, plus deployment presets and a fit from measured steps.

An iteration of a continuous-batching engine costs a fixed part (reading the weights, launch overhead), a part
per token pushed through the linear layers (prefill and decode tokens alike), a part per KV token read by
attention, and the quadratic attention work of prefill chunks. A linear model over those four features is what
Vidur/DistServe-style simulators use; it is cheap enough to evaluate inside the simulator's inner loop and can
be fitted by least squares from a real engine's step log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class StepCost:
    base_s: float  # per iteration: weight reads, kernel launches, sampling
    token_s: float  # per prefill or decode token through the dense layers
    kv_read_s: float  # per KV token attended to (all sequences of the batch)
    attn_pair_s: float  # per (query, key) pair of a prefill chunk (causal attention FLOPs)

    def step_s(self, prefill_tokens: int, decode_seqs: int, kv_tokens_read: int, attn_pairs: float) -> float:
        return (self.base_s + self.token_s * (prefill_tokens + decode_seqs) + self.kv_read_s * kv_tokens_read
                + self.attn_pair_s * attn_pairs)

    def prefill_s(self, new_tokens: int, cached_tokens: int = 0, chunk: int = 8192) -> float:
        """Time to prefill `new_tokens` after `cached_tokens` alone on the engine, chunked like the engine."""
        t, done = 0.0, cached_tokens
        left = new_tokens
        while left > 0:
            n = min(chunk, left)
            t += self.step_s(n, 0, done + n, prefill_pairs(done, n))
            done += n
            left -= n
        return t

    def decode_s_per_token(self, batch: int, context: int) -> float:
        """One sequence's share-free decode latency: one step of a batch of `batch` at `context` tokens."""
        return self.step_s(0, batch, batch * context, 0.0)


def prefill_pairs(cached: int, n: int) -> float:
    """(query, key) pairs of a causal prefill chunk of n tokens after `cached` tokens."""
    return n * cached + n * (n + 1) / 2.0


# Hand-set placeholder for CPU engines (not fitted): only relative service times matter for ordering. A cost
# fitted from an engine's step log (`fit`) gives real predictions.
CPU_DEFAULT_COST = StepCost(base_s=3e-3, token_s=2e-5, kv_read_s=1e-8, attn_pair_s=1e-10)


HOST_COPY_BYTES_PER_S = 10e9  # assumed device<->host KV copy rate of a live engine (PCIe-class; not measured here)


@dataclass(frozen=True)
class DeploymentProfile:
    """A model on its hardware: step cost, KV geometry and the engine limits the simulator enforces."""

    name: str
    cost: StepCost
    kv_bytes_per_token: int
    gpu_kv_tokens: int
    cpu_kv_tokens: int
    link_bytes_per_s: float  # GPU<->CPU KV transfer bandwidth (one direction)
    max_model_len: int
    # KV copied in from another engine's GPU or host memory (RDMA over the node's NIC); 0: it cannot be, a job that
    # moves is recomputed where it runs next
    peer_bytes_per_s: float = 0.0
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    block_size: int = 16
    source: str = ""

    @property
    def gpu_blocks(self) -> int:
        return self.gpu_kv_tokens // self.block_size

    @property
    def cpu_blocks(self) -> int:
        return self.cpu_kv_tokens // self.block_size

    def swap_s(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.link_bytes_per_s

    def receive_s(self, tokens: int) -> float | None:
        """Seconds to copy `tokens` of a job's KV in from another engine; None where it cannot be."""
        return tokens * self.kv_bytes_per_token / self.peer_bytes_per_s if self.peer_bytes_per_s > 0 else None

    def with_kv_tokens(self, gpu_kv_tokens: int) -> DeploymentProfile:
        return replace(self, gpu_kv_tokens=gpu_kv_tokens)


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    return 2 * layers * kv_heads * head_dim * dtype_bytes


_H100_HBM = 3.35e12  # bytes/s, SXM5
_H100_BF16 = 989e12  # dense FLOP/s

# Llama-3-8B (32 layers, 8 KV heads x 128, 8.03 B params) on one H100 SXM, vLLM, gpu_memory_utilization 0.9.
# Roofline with stated efficiencies; the decode floor (6 ms) matches public single-stream figures of
# ~160 tok/s, and the per-token cost (33 us) matches public prefill throughputs of ~30k tok/s.
_L8_KV = kv_bytes_per_token(32, 8, 128)
LLAMA3_8B_H100 = DeploymentProfile(
    name="llama3-8b-h100",
    cost=StepCost(
        base_s=16.06e9 / (_H100_HBM * 0.8) + 1.0e-3,  # weights at 80% of HBM bandwidth + launch overhead
        token_s=2 * 8.03e9 / (_H100_BF16 * 0.5),  # 2 FLOP/param/token at 50% MFU
        kv_read_s=_L8_KV / (_H100_HBM * 0.7),  # attention reads KV at 70% of HBM bandwidth
        attn_pair_s=4 * 32 * 32 * 128 / (_H100_BF16 * 0.4),
    ),
    kv_bytes_per_token=_L8_KV,
    # 80 GB x 0.9 - 16.06 GB weights - ~4 GB activations / CUDA graphs = ~52 GB of KV.
    gpu_kv_tokens=int(52e9 // _L8_KV),
    cpu_kv_tokens=int(100e9 // _L8_KV),
    link_bytes_per_s=25e9,  # PCIe Gen5 x16 as achieved for paged KV blocks (not the 64 GB/s peak)
    max_model_len=32768,
    peer_bytes_per_s=25e9,  # a 400 Gb/s NIC per GPU (DGX H100), behind the same PCIe link: that link's rate
    source="roofline: H100 SXM 3.35 TB/s HBM, 989 TFLOPS bf16; efficiencies 80%/50%/70%/40%",
)

# The same model on one A100 SXM 80 GB (2.04 TB/s HBM, 312 TFLOPS bf16), with the H100 profile's efficiencies: the
# older nodes of a mixed fleet (bench.jct_cluster --fleet mixed). Same memory, so the same KV room; each step
# ~1.7x (decode) to ~3x (prefill) slower.
_A100_HBM = 2.04e12
_A100_BF16 = 312e12
LLAMA3_8B_A100 = replace(
    LLAMA3_8B_H100,
    name="llama3-8b-a100",
    cost=StepCost(base_s=16.06e9 / (_A100_HBM * 0.8) + 1.0e-3, token_s=2 * 8.03e9 / (_A100_BF16 * 0.5),
                  kv_read_s=_L8_KV / (_A100_HBM * 0.7), attn_pair_s=4 * 32 * 32 * 128 / (_A100_BF16 * 0.4)),
    link_bytes_per_s=20e9,  # PCIe Gen4 x16 as achieved (not the 32 GB/s peak)
    peer_bytes_per_s=20e9,  # a 200 Gb/s NIC per GPU (DGX A100): 25 GB/s peak, as achieved
    source="roofline: A100 SXM 2.04 TB/s HBM, 312 TFLOPS bf16; efficiencies 80%/50%/70%/40%",
)

# The same model on an H100 that shares its memory with another model (an embedding or reranking server beside it,
# this engine started at vLLM's gpu_memory_utilization 0.45): 80 GB x 0.45 - 16.06 GB weights - ~4 GB activations =
# ~16 GB of KV, under a third of a whole H100's, at the same speed (bench.jct_cluster --fleet kv).
LLAMA3_8B_H100_SHARED = replace(
    LLAMA3_8B_H100,
    name="llama3-8b-h100-shared",
    gpu_kv_tokens=int(16e9 // _L8_KV),
    source=LLAMA3_8B_H100.source + "; gpu_memory_utilization 0.45 (KV room of ~16 GB)",
)

# Llama-3-70B (80 layers, 8 KV heads x 128, 70.6 B params), tensor parallel over 4 H100 SXM.
_L70_KV = kv_bytes_per_token(80, 8, 128)
LLAMA3_70B_4XH100 = DeploymentProfile(
    name="llama3-70b-4xh100",
    cost=StepCost(
        base_s=141.2e9 / 4 / (_H100_HBM * 0.8) + 80 * 2 * 15e-6 + 1.0e-3,  # + 2 all-reduces per layer
        token_s=2 * 70.6e9 / (4 * _H100_BF16 * 0.5),
        kv_read_s=_L70_KV / 4 / (_H100_HBM * 0.7),
        attn_pair_s=4 * 80 * 64 * 128 / (4 * _H100_BF16 * 0.4),
    ),
    kv_bytes_per_token=_L70_KV,
    gpu_kv_tokens=int((4 * 72e9 - 141.2e9 - 4 * 4e9) // _L70_KV),
    cpu_kv_tokens=int(400e9 // _L70_KV),
    link_bytes_per_s=4 * 25e9,
    max_model_len=32768,
    source="roofline: 4x H100 SXM, TP=4, efficiencies as the 8B profile, 15 us per all-reduce",
)

PROFILES: dict[str, DeploymentProfile] = {p.name: p for p in (LLAMA3_8B_H100, LLAMA3_8B_A100, LLAMA3_8B_H100_SHARED,
                                                                   LLAMA3_70B_4XH100)}


def get_profile(name: str) -> DeploymentProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown model profile '{name}'; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class StepRecord:
    """One measured engine iteration (the real engine's step log writes these)."""

    prefill_tokens: int
    decode_seqs: int
    kv_tokens_read: int
    attn_pairs: float
    wall_s: float


@dataclass(frozen=True)
class FitResult:
    cost: StepCost
    mean_abs_pct_error: float
    samples: int


def fit(records: Iterable[StepRecord]) -> FitResult:
    """Non-negative least squares of the four coefficients from measured steps.

    Coefficients that come out negative (collinear or unexercised features, e.g. no prefill in the log) are
    pinned to zero and the rest refitted, so the model never predicts negative time.
    """
    recs = list(records)
    if len(recs) < 4:
        raise ValueError(f"fit needs at least 4 step records, got {len(recs)}")
    x = np.array([[1.0, r.prefill_tokens + r.decode_seqs, r.kv_tokens_read, r.attn_pairs] for r in recs])
    y = np.array([r.wall_s for r in recs])
    if not np.all(np.isfinite(y)) or np.any(y < 0):
        raise ValueError("fit: wall_s must be finite and non-negative")
    scale = np.maximum(x.max(axis=0), 1e-12)
    xs = x / scale
    active = list(range(4))
    coef = np.zeros(4)
    while active:
        sol, *_ = np.linalg.lstsq(xs[:, active], y, rcond=None)
        if np.all(sol >= 0):
            coef[:] = 0
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    coef = coef / scale
    pred = x @ coef
    mape = float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-9)))
    cost = StepCost(*(float(c) for c in coef))
    if not math.isfinite(mape):
        raise ValueError("fit produced a non-finite error")
    return FitResult(cost, mape, len(recs))
