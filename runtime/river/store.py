"""The model lookup table: FAISS over model keys, Parquet metadata, safetensors weights with checksums.

The store lives wherever `uri` points: a local path, or any filesystem pyarrow opens from a URI (`s3://bucket/prefix`,
`gs://...`; for a local S3-compatible server add `?endpoint_override=host:port&scheme=http`; credentials come from
the usual environment, e.g. `AWS_ACCESS_KEY_ID`), so a store on shared storage outlives the node whose actor wrote it.
Layout: `metadata.parquet` (one row per model: id, keys, source segments, PSNR gain, training seconds,
created, SR config, checksum) and `weights/<id>.safetensors`. The FAISS index (`IndexIDMap2(IndexFlatIP)` over
L2-normalised keys; each key's id is its model id) is rebuilt from the metadata on open: flat search over the same
vectors and ids gives the same answers, and there is no second file to keep consistent. Weights are written
before the metadata that names them, each write whole (a local file is written aside and renamed into place; an
object store's put is already all-or-nothing), so a crash leaves the previous store.
A weight file that is missing or whose checksum does not match is reported in `problems`, its model is taken out
of the index, and the rest of the store keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from safetensors.torch import load, save

from runtime.river.features import DIM
from runtime.river.sr import SRConfig

SCHEMA = pa.schema([
    ("model_id", pa.int64()), ("keys", pa.list_(pa.list_(pa.float32(), DIM))),
    ("source_segments", pa.list_(pa.string())), ("psnr_gain_db", pa.float64()), ("train_s", pa.float64()),
    ("created", pa.float64()), ("sr_config", pa.string()), ("checksum", pa.string()), ("weight_bytes", pa.int64()),
])


class CorruptModelError(RuntimeError):
    """A model's weight file is missing or does not match its checksum."""


@dataclass(frozen=True)
class ModelInfo:
    model_id: int
    keys: np.ndarray
    source_segments: tuple[str, ...]
    psnr_gain_db: float
    train_s: float
    created: float
    sr: SRConfig
    checksum: str
    weight_bytes: int


def encode_weights(state: dict[str, torch.Tensor]) -> tuple[bytes, str]:
    """A model's weights as they are stored and travel (safetensors, floating-point tensors in float16) and their
    checksum (SHA-256, the HTTP ETag). float16 halves what prefetch sends (a 4 x 16 model: 94 -> 48 KB) and moved
    PSNR-Y by under 0.001 dB (the game's generic model on six Freedoom segments); models train and run in float32
    or bf16, converted as they load."""
    wire = {}
    for name, tensor in state.items():
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
            if not torch.isfinite(tensor).all():
                raise ValueError(f"weights: {name!r} does not fit float16 (non-finite after conversion)")
        wire[name] = tensor.contiguous()
    data = save(wire)
    return data, hashlib.sha256(data).hexdigest()


def as_stored(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` at the precision the store keeps and serves it (what `encode_weights` writes)."""
    return load(encode_weights(state)[0])


def open_uri(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path `uri` names; a plain path is a local directory."""
    text = os.fspath(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).resolve())
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise ValueError(redacted(f"store: cannot open {text!r} ({e})")) from None


def redacted(text: str) -> str:
    """`text` with the credentials of any URI in it (`s3://key:secret@bucket/...`) blanked, for messages."""
    return re.sub(r"(\w+://)[^/@\s]*@", r"\1***@", text)


class ModelStore:
    """Single-writer store (the ModelStore actor is that writer); reads are safe from any thread."""

    def __init__(self, uri: str | os.PathLike):
        import faiss

        self.uri = os.fspath(uri)
        self._fs, self._base = open_uri(uri)
        self._fs.create_dir(f"{self._base}/weights", recursive=True)
        self._lock = threading.RLock()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        self._models: dict[int, ModelInfo] = {}
        self.problems: dict[int, str] = {}  # model id -> why it is not served
        self._next_id = 1  # ids are never reused, even after a removal: clients cache weights by id
        meta = self._read("metadata.parquet")
        if meta is not None:
            table = pq.read_table(pa.BufferReader(meta))
            self._next_id = int((table.schema.metadata or {}).get(b"next_id", b"1"))
            for row in table.to_pylist():
                info = ModelInfo(row["model_id"], np.asarray(row["keys"], np.float32), tuple(row["source_segments"]),
                                 row["psnr_gain_db"], row["train_s"], row["created"],
                                 SRConfig(**json.loads(row["sr_config"])), row["checksum"], row["weight_bytes"])
                self._models[info.model_id] = info
                problem = self._check(info)
                if problem:
                    self.problems[info.model_id] = problem
                else:
                    self._index_add(info)

    # ------------------------------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._models) - len(self.problems)

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(i for i in self._models if i not in self.problems)

    def info(self, model_id: int) -> ModelInfo:
        with self._lock:
            if model_id not in self._models:
                raise KeyError(f"no model {model_id} in the store")
            return self._models[model_id]

    def search(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest model per feature row: (ids, cosine similarities); id -1 when the store is empty."""
        with self._lock:
            if self._index.ntotal == 0 or len(features) == 0:
                return np.full(len(features), -1, np.int64), np.zeros(len(features), np.float32)
            sims, ids = self._index.search(np.ascontiguousarray(features, dtype=np.float32), 1)
        return ids[:, 0], sims[:, 0]

    def weight_bytes(self, model_id: int) -> bytes:
        """The safetensors bytes of a model, verified against its checksum."""
        info = self.info(model_id)
        data = self._read(_weights(model_id))
        if data is None:
            self._quarantine(model_id, "weight file missing")
            raise CorruptModelError(f"model {model_id}: weight file missing")
        if hashlib.sha256(data).hexdigest() != info.checksum:
            self._quarantine(model_id, "checksum mismatch")
            raise CorruptModelError(f"model {model_id}: weight file does not match its checksum")
        return data

    def weights(self, model_id: int) -> dict[str, torch.Tensor]:
        return load(self.weight_bytes(model_id))

    # ------------------------------------------------------------------------------------------ writes
    def add(self, state: dict[str, torch.Tensor], sr: SRConfig, keys: np.ndarray, *, source_segments: list[str],
            psnr_gain_db: float, train_s: float) -> int:
        keys = np.asarray(keys, np.float32)
        if keys.ndim != 2 or keys.shape[1] != DIM or len(keys) == 0:
            raise ValueError(f"keys must be a non-empty (k, {DIM}) array, got {keys.shape}")
        data, checksum = encode_weights(state)
        with self._lock:
            model_id = self._next_id
            self._next_id += 1
            self._write(_weights(model_id), data)
            info = ModelInfo(model_id, keys / np.linalg.norm(keys, axis=1, keepdims=True), tuple(source_segments),
                             float(psnr_gain_db), float(train_s), time.time(), sr, checksum, len(data))
            self._models[model_id] = info
            self._write_metadata()
            self._index_add(info)
        return model_id

    def remove(self, model_id: int) -> None:
        with self._lock:
            self.info(model_id)
            del self._models[model_id]
            self.problems.pop(model_id, None)
            self._index.remove_ids(np.array([model_id], np.int64))
            self._write_metadata()
            self._delete(_weights(model_id))

    # ------------------------------------------------------------------------------------------ internals
    def _index_add(self, info: ModelInfo) -> None:
        self._index.add_with_ids(info.keys, np.full(len(info.keys), info.model_id, np.int64))

    def _check(self, info: ModelInfo) -> str:
        data = self._read(_weights(info.model_id))
        if data is None:
            return "weight file missing"
        if hashlib.sha256(data).hexdigest() != info.checksum:
            return "checksum mismatch"
        return ""

    def _quarantine(self, model_id: int, why: str) -> None:
        with self._lock:
            if model_id not in self.problems:
                self.problems[model_id] = why
                self._index.remove_ids(np.array([model_id], np.int64))

    def _write_metadata(self) -> None:
        rows = [{"model_id": m.model_id, "keys": m.keys.tolist(), "source_segments": list(m.source_segments),
                 "psnr_gain_db": m.psnr_gain_db, "train_s": m.train_s, "created": m.created,
                 "sr_config": json.dumps(m.sr.to_dict()), "checksum": m.checksum, "weight_bytes": m.weight_bytes}
                for m in sorted(self._models.values(), key=lambda m: m.model_id)]
        sink = pa.BufferOutputStream()
        table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata({"next_id": str(self._next_id)})
        pq.write_table(table, sink)
        self._write("metadata.parquet", sink.getvalue().to_pybytes())

    def _read(self, name: str) -> bytes | None:
        """The object's bytes; None when it does not exist."""
        try:
            with self._fs.open_input_stream(f"{self._base}/{name}") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: bytes) -> None:
        path = f"{self._base}/{name}"
        if self._fs.type_name != "local":  # an object appears whole or not at all
            with self._fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = f"{self._base}/{name}.{os.getpid()}.tmp"
        with self._fs.open_output_stream(tmp) as f:
            f.write(data)
        self._fs.move(tmp, path)

    def _delete(self, name: str) -> None:
        with suppress(FileNotFoundError):
            self._fs.delete_file(f"{self._base}/{name}")


def _weights(model_id: int) -> str:
    return f"weights/{model_id}.safetensors"
