"""`eval_fabe` params.victim: FABE's official inference (pure pydantic, imported by methods/params.py).

Defaults are lyr17/Frontdoor-Adjustment-Backdoor-Elimination @ed61996,
OpenBackdoor/openbackdoor/defenders/fabe_beam_defender.py lines 84-96 (generate: 4 beams in 4 groups,
4 rewrites returned) and configs/fabe_config.json (diversity 0.1; the victim's max_len 512).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FABEVictimParams(BaseModel):
    """Rewrite each test input with diverse beam search and classify through the victim: its logits on
    the rewrites, weighted by softmax(sequence scores), give the prediction; ASR and clean accuracy."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description="the victim: a Hugging Face sequence-classification model dir")
    target_label: int = Field(..., ge=0, description="the attack's target class (ASR: poisoned rows of another true class predicted as this)")
    num_beams: int = Field(4, ge=1)
    num_beam_groups: int = Field(4, ge=1, description="num_beams must be a multiple of it")
    diversity_penalty: float = Field(0.1, ge=0, description="Hamming diversity between groups (fabe_config.json: 0.1)")
    num_return_sequences: int = Field(4, ge=1, description="rewrites per input that vote (at most num_beams)")
    max_length: int = Field(512, ge=8, description="victim input tokens (OpenBackdoor's max_len)")
    batch_size: int = Field(32, ge=1, description="rewrites per victim forward")
    rewrite_cut: Literal["first_line", "none"] = Field(
        "first_line", description="first_line: the rewrite ends at its first newline, as the official (one-line "
                                  "sentences) | none: keep every line (multi-line inputs such as code)")

    @model_validator(mode="after")
    def _beams_fit(self) -> "FABEVictimParams":
        # generate() would fail on the rank, after the cleaner is loaded: say so with the plan instead.
        if self.num_beams % self.num_beam_groups:
            raise ValueError(f"num_beams ({self.num_beams}) must be a multiple of num_beam_groups "
                             f"({self.num_beam_groups}): each group holds num_beams / num_beam_groups beams; "
                             "the official is num_beams: 4, num_beam_groups: 4")
        if self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams "
                             f"({self.num_beams}); set num_return_sequences: {self.num_beams} (the official) or fewer")
        return self
