"""Lisa's bookkeeping, free of the Trainer: the two-state schedule, the guide-data stream, and the
state a checkpoint must carry for a resumed run to continue exactly.

The schedule is a transcription of git-disl/Lisa `trainer.py` (ADMMTrainer.init / check_mode /
training_step): counters `steps` and `clock`, the switch rules, and the proximal gate. Here the
counters count optimizer steps (the repo counts training_step calls, which is the same with its
gradient_accumulation_steps=1), so a switch never falls inside an accumulation window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import torch

Mode = Literal["alignment", "finetune"]
STATE_FILE = "lisa_state.pt"  # inside checkpoint-N, written before its COMPLETE marker
STATE_VERSION = 1


@dataclass
class LisaSchedule:
    alignment_step: int
    finetune_step: int
    has_guide: bool
    mode: Mode = "finetune"
    steps: int = 0
    clock: int = 0
    switches: int = 0

    @classmethod
    def start(cls, alignment_step: int, finetune_step: int, has_guide: bool) -> "LisaSchedule":
        # ADMMTrainer.init: alignment first when there is something to align with.
        mode: Mode = "alignment" if alignment_step != 0 and has_guide else "finetune"
        return cls(alignment_step, finetune_step, has_guide, mode=mode)

    def begin_step(self) -> Mode | None:
        """check_mode, once before each optimizer step: the state entered by a switch, or None."""
        if self.mode == "alignment":
            if self.clock % self.alignment_step == 0 and self.steps != 0 and self.finetune_step != 0:
                self.mode, self.clock = "finetune", 0
                self.switches += 1
                return "finetune"
        # The repo evaluates `clock % finetune_step` first and divides by zero when it is 0 in the
        # finetune state; here finetune_step 0 simply never switches (the state then never ends).
        elif (self.finetune_step != 0 and self.clock % self.finetune_step == 0 and self.steps != 0
              and self.alignment_step != 0 and self.has_guide):
            self.mode, self.clock = "alignment", 0
            self.switches += 1
            return "alignment"
        return None

    @property
    def uses_guide(self) -> bool:
        """In the alignment state the step's batch is replaced by the next guide batch."""
        return self.mode == "alignment"

    def proximal_active(self, total_steps: int) -> bool:
        """`steps > 0.1 * len(train_dataloader) * num_train_epochs` in the repo, read before the
        step's own increment; total_steps is the run's optimizer steps (the same number with
        accumulation 1 and whole epochs, and also right when max_steps is set)."""
        return self.steps > 0.1 * total_steps

    def end_step(self) -> None:
        self.steps += 1
        self.clock += 1


def guide_indices(n: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int, batch: int) -> list[int]:
    """This rank's share of global guide batch `batch` of pass `epoch` over n rows.

    Each pass is a seeded permutation (the repo draws a RandomSampler from the global RNG; a
    private seed makes the stream reproducible and resumable from a position). A global batch is
    world_size x batch_size rows and each rank takes its slice, like accelerate's sharded loader;
    a short last batch is filled from the start of the pass so every rank gets a full batch.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    width = world_size * batch_size
    chunk = perm[batch * width:(batch + 1) * width]
    while len(chunk) < width:
        chunk += perm[: width - len(chunk)]
    return chunk[rank * batch_size:(rank + 1) * batch_size]


@dataclass
class GuidePosition:
    """Where the guide stream is: the next global batch to draw."""

    epoch: int = 0
    batch: int = 0


@dataclass
class GuideStream:
    """Guide (safe) data cycled forever, as `sample_from_alignment` restarts its iterator."""

    n: int
    batch_size: int
    world_size: int
    rank: int
    seed: int
    position: GuidePosition = field(default_factory=GuidePosition)

    @property
    def batches_per_pass(self) -> int:
        width = self.world_size * self.batch_size
        return max(1, -(-self.n // width))

    def next_indices(self) -> list[int]:
        p = self.position
        idx = guide_indices(self.n, self.batch_size, self.world_size, self.rank, self.seed, p.epoch, p.batch)
        p.batch += 1
        if p.batch >= self.batches_per_pass:
            p.epoch, p.batch = p.epoch + 1, 0
        return idx


def drift(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """D = sum over tensors of ||a - b||^2, accumulated in float64 (the repo: torch.norm(...)**2 in
    the parameters' dtype; the value is the same up to rounding)."""
    total = torch.zeros((), dtype=torch.float64)
    for name, t in a.items():
        total += (t.detach().double().cpu() - b[name].detach().double().cpu()).pow(2).sum()
    return float(total)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes: equal digests mean bitwise-equal copies."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
