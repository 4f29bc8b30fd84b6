"""The player's SR runtime: one uint8 frame in, its super-resolved uint8 frame out, as fast as this CPU allows.

Measured on this 2-core CPU (Xeon with AMX and AVX-512 BF16), default model (4 blocks x 16 channels, x2), one
640x360 frame to 1280x720, SR time per frame p50 in bench.river_client (bench/results/river_client.md):
  torch fp32 76 ms, ONNX Runtime 1.32 fp32 62 ms, bf16 channels-last eager 33 ms, bf16 compiled by inductor 33 ms
  (28.5 frames/s with decoding, p99 44 ms per frame).
The profile said where the time went: the convolutions took ~18 ms of a 47-ms frame; bicubic upsampling of the
base (`F.interpolate`, 11 ms in bf16) and element-wise passes at 720p took the rest. So the model adds its
residual to bicubic as pixel-shuffle phases at low resolution, computed as fixed convolutions
(`runtime.river.sr.bicubic_phases`), and residual blocks add in one pass.
The runtimes here are bf16 in channels-last layout (AMX tiles), eager or compiled. bf16 rounding left the
frames' PSNR-Y unchanged to 0.01 dB (bench.river_client's fp32 and bf16 rows). One module per SR shape:
switching models copies weights into it in place, so a compiled module is compiled once per shape, not once per
model (inductor's `freezing`, which bakes weights in, measured 31 vs 32 ms here and would compile every model).
Without bf16 in hardware (an AMD EPYC with AVX2 only) bf16 is emulated: the compiled bf16 runtime took ~2 s per
720p frame there. So the default, `auto`, is the compiled bf16 runtime only where the CPU reports bf16
instructions (AVX512-BF16, AMX-BF16, ARM BF16/SVE-BF16) and fp32 elsewhere.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from runtime.river.sr import EDSR, SRConfig

RUNTIMES = ("auto", "fp32", "bf16", "compiled")
BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")  # torch.cpu.get_capabilities() keys
log = logging.getLogger(__name__)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (else torch emulates it, slower than fp32)."""
    caps = torch.cpu.get_capabilities()
    return any(caps.get(name, False) for name in BF16_FEATURES)


def resolve_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        return "compiled" if native_bf16() else "fp32"
    return runtime


class Enhancer:
    """SR of single frames with the model `load` last set. `runtime`: fp32 (eager, the reference), bf16 (eager,
    channels-last), compiled (bf16 through torch.compile's inductor; ~35 s to compile a shape the first time,
    cached on disk after; falls back to bf16 eager, with a warning, where no C++ compiler is available) or auto
    (compiled where the CPU has bf16 instructions, else fp32; `runtime` then says which)."""

    def __init__(self, runtime: str = "auto", threads: int | None = None):
        self.runtime = resolve_runtime(runtime)
        if threads is not None:
            torch.set_num_threads(threads)
        self._modules: dict[SRConfig, torch.nn.Module] = {}
        self._compiled: dict[SRConfig, object] = {}
        self.sr: SRConfig | None = None

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.runtime == "fp32" else torch.bfloat16

    def load(self, state: dict[str, torch.Tensor], sr: SRConfig) -> None:
        module = self._modules.get(sr)
        if module is None:
            module = EDSR(sr).eval().to(dtype=self.dtype, memory_format=torch.channels_last)
            module.requires_grad_(False)
            self._modules[sr] = module
        with torch.no_grad():
            module.load_state_dict(state)  # copies into the same parameters: a compiled module stays valid
        self.sr = sr

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (scale H, scale W, 3) uint8."""
        if self.sr is None:
            raise RuntimeError("Enhancer: load a model first")
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]  # NHWC memory = channels-last
        return self._run(x)[0].permute(1, 2, 0).numpy()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        module = self._modules[self.sr]
        if self.runtime != "compiled":
            return _enhance(module, x, self.dtype)
        fn = self._compiled.get(self.sr)
        if fn is None:
            fn = self._compiled[self.sr] = torch.compile(lambda x: _enhance(module, x, torch.bfloat16), dynamic=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(x)
        except Exception as e:  # noqa: BLE001 - inductor needs a working C++ toolchain; eager bf16 still works
            log.warning("torch.compile failed (%s); using bf16 eager", str(e).splitlines()[0][:200])
            self.runtime = "bf16"
            return _enhance(module, x, torch.bfloat16)


def _enhance(module: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = module(x.to(dtype).div(255.0))
    return y.clamp(0, 1).mul(255.0).round().to(torch.uint8)
