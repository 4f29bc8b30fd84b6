"""River's work off the request path as Ray tasks: fine-tunes (`runtime.river.train.finetune`, on whatever node
has room, a GPU when the cluster has one) and the quality gate's checks. The library functions have no Ray
import; this is the only place that knows about Ray."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future

import ray
import torch

from runtime.river.sr import SRConfig
from runtime.river.train import Pairs, TrainConfig, TrainResult, finetune


@ray.remote
def _finetune_task(base: dict[str, torch.Tensor], sr: SRConfig, pairs: Pairs, cfg: TrainConfig) -> TrainResult:
    return finetune(base, sr, pairs, cfg, device="cuda" if torch.cuda.is_available() else "cpu")


def submit_finetune(base: dict[str, torch.Tensor], sr: SRConfig, pairs: Pairs, cfg: TrainConfig,
                    num_cpus: float = 1, num_gpus: float | None = None) -> ray.ObjectRef:
    """Start a fine-tune on the cluster; `num_gpus` defaults to 1 when the cluster has GPUs, else 0."""
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return _finetune_task.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(base, sr, pairs, cfg)


@ray.remote(max_restarts=-1)
class _GateWorker:
    """A warm process for the gate's checks: a Ray task per check would start a fresh worker and import torch each
    time (seconds of CPU on a small machine, measured), which is more than the check itself."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)

    def run(self, fn, *args):
        return fn(*args)


class RayGate:
    """The quality gate's checks on `workers` warm Ray actors of `num_cpus` each, `threads` torch threads each
    (`runtime.river.online.GateRunner`); how many checks are in flight is bounded by the caller
    (`GateConfig.max_checks`), and each worker runs its checks one at a time."""

    def __init__(self, num_cpus: float = 0, workers: int = 1, threads: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._workers = [_GateWorker.options(num_cpus=num_cpus).remote(threads) for _ in range(workers)]
        self._next = 0

    def submit(self, fn, /, *args) -> Future:
        worker = self._workers[self._next % len(self._workers)]
        self._next += 1
        return worker.run.remote(fn, *args).future()


class RayTrainer:
    """Fine-tunes as Ray tasks, at most `max_running` at once; later ones wait in submission order. It implements
    `runtime.river.online.Trainer` (futures), so the online path runs unchanged on a cluster."""

    def __init__(self, max_running: int = 2, num_cpus: float = 1, num_gpus: float | None = None):
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        self.max_running, self.num_cpus, self.num_gpus = max_running, num_cpus, num_gpus
        self._lock = threading.RLock()
        self._waiting: deque[tuple[tuple, Future]] = deque()
        self._running: dict[ray.ObjectRef, Future] = {}
        self.done = 0
        self.failed = 0

    def submit(self, base: dict[str, torch.Tensor], sr: SRConfig, pairs: Pairs, cfg: TrainConfig) -> Future:
        future: Future = Future()
        with self._lock:
            self._waiting.append(((base, sr, pairs, cfg), future))
            self._pump()
        return future

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"queued": len(self._waiting), "running": len(self._running), "done": self.done,
                    "failed": self.failed}

    def _pump(self) -> None:
        while self._waiting and len(self._running) < self.max_running:
            args, future = self._waiting.popleft()
            ref = submit_finetune(*args, num_cpus=self.num_cpus, num_gpus=self.num_gpus)
            self._running[ref] = future
            ref.future().add_done_callback(lambda f, ref=ref: self._finished(ref, f))

    def _finished(self, ref: ray.ObjectRef, result: Future) -> None:
        with self._lock:
            future = self._running.pop(ref)
            error = result.exception()
            if error is None:
                self.done += 1
                future.set_result(result.result())
            else:
                self.failed += 1
                future.set_exception(error)
            self._pump()
