"""vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`, the CPU build) in a subprocess, started
the three ways the comparisons need: as users run it, with this runtime's engine settings, and in drop-in mode.

The module form is the documented one: the `vllm` console script does not start with the CPU build.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import httpx

from runtime.engine.host_swap import CONNECTOR_NAME, MODULE_PATH
from runtime.engine.vllm_engine import PLUGINS, RESERVED_CPUS_ENV, EngineConfig
from runtime.engine.vllm_scheduler import POLICY_ENV

ROOT = Path(__file__).parents[1]
MODES = ("stock", "stock_like_ours", "drop_in")
STOCK_BLOCK_SIZE = 128  # vLLM's CPU platform default when no --block-size is given
OURS = {f.name: f.default for f in fields(EngineConfig)}  # this runtime's engine settings, where they are defined


@dataclass(frozen=True)
class StockServer:
    """One way of starting the stock server. `stock`: what users type (vLLM's defaults: compiled graphs, its own
    reserved core, block size 128) plus the limits every compared server shares (context length, batch size, KV
    pool). `stock_like_ours`: the same server with the engine settings this runtime uses (eager, 32-token blocks,
    2,048 batched tokens, no reserved core): only the scheduling differs from `drop_in`, which adds the policy
    scheduler plugin and the host-swap KV connector."""

    model: str
    mode: str = "stock"
    served_model_name: str = ""
    max_model_len: int = 4096
    max_num_seqs: int = 32
    kv_pool_tokens: int | None = None  # KV pool size in tokens, whatever the block size (None: vLLM sizes it)
    policy: str = "astraea"
    host_swap_blocks: int = 4096
    env: dict[str, str] = field(default_factory=dict)  # more environment, e.g. AGENTRIVER_KV_LOG

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def block_size(self) -> int:
        return STOCK_BLOCK_SIZE if self.mode == "stock" else OURS["block_size"]

    @property
    def kv_blocks(self) -> int | None:
        """The pool in this server's blocks (rounded up), plus vLLM's null block."""
        if self.kv_pool_tokens is None:
            return None
        return -(-self.kv_pool_tokens // self.block_size) + 1

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model, "--port", str(port),
               "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.kv_blocks is not None:
            cmd += ["--num-gpu-blocks-override", str(self.kv_blocks)]
        if self.mode != "stock":
            cmd += ["--enforce-eager", "--block-size", str(OURS["block_size"]),
                    "--max-num-batched-tokens", str(OURS["max_num_batched_tokens"])]
        if self.mode == "drop_in":
            connector = {"kv_connector": CONNECTOR_NAME, "kv_connector_module_path": MODULE_PATH,
                         "kv_role": "kv_both", "kv_connector_extra_config": {"host_blocks": self.host_swap_blocks}}
            cmd += ["--scheduler-cls", PLUGINS["policy"], "--kv-transfer-config", json.dumps(connector)]
        return cmd

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(OURS["kv_cache_gib"]), **self.env}
        if self.mode == "stock":
            env.pop(RESERVED_CPUS_ENV, None)
        else:  # as runtime.engine.vllm_engine.EngineConfig sets it
            env[RESERVED_CPUS_ENV] = str(OURS["reserved_cpus"])
        if self.mode == "drop_in":
            env[POLICY_ENV] = self.policy
        return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(server: StockServer, log: Path, port: int | None = None, start_timeout_s: float = 600):
    """Start `server`, wait for /health, yield its URL; stop it on exit. Its output goes to `log`."""
    port = port or free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(server.command(port), env=server.environment(), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the vLLM server ({server.mode}) exited with {proc.returncode}: "
                                   f"{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server ({server.mode}) did not start in {start_timeout_s:.0f} s; "
                                   f"see {log}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
