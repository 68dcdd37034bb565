"""Per-method parameter schemas (pure pydantic): the launcher validates `params:` with these
before anything starts, so a typo in a method parameter is an error, not silently ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SFTParams(Params):
    """Supervised fine-tuning with the prompt masked out of the loss; optionally the harmful
    fine-tuning attack mix (first int(poison_ratio * sample_num) harmful + the rest benign)."""

    template: str = Field("auto", description="auto | alpaca | user_assistant | chat")
    poison_ratio: float = Field(0.0, ge=0, le=1)
    sample_num: int | None = Field(None, ge=1, description="size of the fine-tuning set (None: all of train)")
    save_adapter: bool = True


class SyntheticParams(Params):
    """A rank that imports no model: cheap stand-in for launcher tests (scheduling, recovery)."""

    steps: int = Field(20, ge=1)
    step_time: float = Field(0.05, ge=0, description="seconds per step")
    startup_time: float = Field(0.0, ge=0)
    hang_at_step: int | None = Field(None, ge=1, description="stop making progress at this step")
    crash_at_step: int | None = Field(None, ge=1, description="exit with code 3 at this step")
    oom_at_step: int | None = Field(None, ge=1, description="print a CUDA OOM error and exit at this step")
    fault_ranks: list[int] = Field(default_factory=lambda: [0], description="ranks that inject the faults")
    fault_attempts: list[int] = Field(default_factory=lambda: [1], description="attempts that inject the faults")
    fail_result: bool = Field(False, description="finish but report status failed in result.json")
