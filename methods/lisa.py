"""Lisa (git-disl/Lisa `trainer.py`, ADMMTrainer with `--optimizer lisa`): the two-state defence.

Alternate `alignment_step` optimizer steps on guide (safe) data and `finetune_step` steps on the
fine-tuning mix. Two copies of the trainable LoRA parameters, `alignment_weights` and
`finetune_weights`, mark where each state began; after the 10 % warm-up the loss gets
(rho/2) * sum ||theta - anchor||^2 with the anchor the copy of the state being left behind.
METHODS.md names the class LisaTrainer; the repo's is ADMMTrainer (same algorithm).

One deliberate reading of the repo over METHODS.md: with guide_data_num 0 (or alignment_step 0)
the run stays in `finetune` and the proximal term still pulls toward theta_0 (alignment_weights is
never replaced), so it is exactly SFT only with rho 0 as well; the tests check both halves.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from launcher.contract import write_json, JobFile
from methods.core.training import MethodTrainer, finish_training
from methods.data import SFTCollator, SFTDataset, role_rows, to_records
from methods.lisa_state import (STATE_FILE, STATE_VERSION, GuidePosition, GuideStream, LisaSchedule, Mode, drift,
                                tensor_digest)
from methods.params import LisaParams
from methods.core.finetune import Setup, setup
from methods.zero import gathered, snapshot

log = logging.getLogger(__name__)


class LisaTrainer(MethodTrainer):
    """MethodTrainer + Lisa's schedule. The state check runs once per optimizer step, where the
    Trainer fetches that step's batches (get_batch_samples), so every micro-batch of a step is in
    the same state and the token count that normalises the loss is the one of the batches used."""

    def __init__(self, *args: Any, lisa: LisaParams, guide_ds: SFTDataset | None, guide_offset: int,
                 rank: int, world_size: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lisa = lisa
        has_guide = guide_ds is not None and len(guide_ds) > 0
        self.schedule = LisaSchedule.start(lisa.alignment_step, lisa.finetune_step, has_guide)
        self.guide_ds = guide_ds if has_guide else None
        self.guide_offset = guide_offset  # guide sample_index = offset + row, so the recorder can name it
        self.guide = GuideStream(len(guide_ds), self.args.per_device_train_batch_size, world_size, rank,
                                 self.args.seed) if has_guide and guide_ds is not None else None
        self.alignment_weights: dict[str, torch.Tensor] = {}
        self.finetune_weights: dict[str, torch.Tensor] = {}
        self.step_mode: Mode = self.schedule.mode
        self.step_proximal = False
        self.last_proximal = 0.0

    # ---- parameters ---------------------------------------------------------------------------

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def proximal(self, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
        """(rho/2) * sum ||theta - anchor||^2 with autograd through theta: its gradient is
        rho * (theta - anchor). A sum of squares rather than the repo's norm(...)**2: the same
        value and gradient, without the norm's 0/0 in backward right after a switch; summed in
        float32 even for bf16 parameters (a no-op in fp32)."""
        named = self.trainable()
        with gathered([p for _, p in named]):
            total = torch.stack([(p.float() - anchor[n].to(p.device).float()).pow(2).sum() for n, p in named]).sum()
        return total * (self.lisa.rho / 2)

    # ---- the schedule -------------------------------------------------------------------------

    def begin_step(self) -> None:
        if not self.alignment_weights:  # first step of a fresh run: both copies start at theta_0
            self.alignment_weights = snapshot(self.trainable())
            self.finetune_weights = {n: t.clone() for n, t in self.alignment_weights.items()}
        entered = self.schedule.begin_step()
        # switch_model, after the state changed: store theta as the copy of the state that ended.
        if entered == "finetune":
            self.alignment_weights = snapshot(self.trainable())
            self.log_drift("alignment")
        elif entered == "alignment":
            self.finetune_weights = snapshot(self.trainable())
            self.log_drift("finetuning")
        self.step_mode = self.schedule.mode
        self.step_proximal = self.lisa.rho > 0 and self.schedule.proximal_active(self.state.max_steps)
        self.schedule.end_step()

    def log_drift(self, which: str) -> None:
        d = drift(self.finetune_weights, self.alignment_weights)
        log.info("%s drift to consensus %s", which, d)  # the repo prints "<which> drift to consensus{D}"
        self.log({f"{which}_drift_to_consensus": d})

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, num_items
        self.begin_step()
        if self.schedule.uses_guide:
            # The fine-tuning batches are drawn and dropped, as the repo replaces `inputs`.
            batches = [self.next_guide_batch() for _ in batches]
            num_items = self._get_num_items_in_batch(batches, device)
        return batches, num_items

    def next_guide_batch(self) -> dict[str, torch.Tensor]:
        assert self.guide is not None and self.guide_ds is not None
        items = []
        for i in self.guide.next_indices():
            item = dict(self.guide_ds[i])
            item["sample_index"] = self.guide_offset + i
            items.append(item)
        return self.data_collator(items)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not model.training:
            return out
        loss, outputs = out if return_outputs else (out, None)
        if self.step_proximal:
            anchor = self.finetune_weights if self.step_mode == "alignment" else self.alignment_weights
            prox = self.proximal(anchor)
            self.last_proximal = float(prox.detach())
            # Once per optimizer step: the Trainer sums a step's micro-batch losses when they were
            # normalised by the step's token count, and averages them otherwise.
            scaled = getattr(self, "loss_is_scaled_for_ga", None)
            if scaled is None:
                scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            loss = loss + (prox / self.current_gradient_accumulation_steps if scaled else prox)
        else:
            self.last_proximal = 0.0
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # the state of the step just logged, and its proximal term
            logs["lisa_alignment"] = float(self.step_mode == "alignment")
            logs["lisa_proximal"] = self.last_proximal
        super().log(logs, start_time)

    # ---- checkpoints --------------------------------------------------------------------------

    def state_dict_lisa(self) -> dict[str, Any]:
        s = self.schedule
        return {"version": STATE_VERSION, "global_step": self.state.global_step, "mode": s.mode, "steps": s.steps,
                "clock": s.clock, "switches": s.switches,
                "guide_position": asdict(self.guide.position) if self.guide else None,
                "alignment_weights": {n: t.detach().cpu() for n, t in self.alignment_weights.items()},
                "finetune_weights": {n: t.detach().cpu() for n, t in self.finetune_weights.items()}}

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            # Rank 0 only (the copies are whole and equal on every rank); CheckpointCallback.on_save
            # runs after this returns on every rank, so the marker comes after this file.
            path = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}" / STATE_FILE
            tmp = path.with_name(path.name + ".tmp")
            torch.save(self.state_dict_lisa(), tmp)
            os.replace(tmp, path)

    def load_lisa_state(self, checkpoint: str | Path) -> dict[str, Any]:
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a Lisa checkpoint must carry its state to resume exactly")
        st = torch.load(path, map_location="cpu", weights_only=True)
        if st.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: Lisa state version {st.get('version')}, expected {STATE_VERSION}")
        names = {n for n, _ in self.trainable()}
        for key in ("alignment_weights", "finetune_weights"):
            if set(st[key]) != names:
                raise ValueError(f"{path}: {key} does not match this model's trainable parameters")
        s = self.schedule
        s.mode, s.steps, s.clock, s.switches = st["mode"], st["steps"], st["clock"], st["switches"]
        if self.guide is not None and st["guide_position"] is not None:
            self.guide.position = GuidePosition(**st["guide_position"])
        device = self.args.device
        self.alignment_weights = {n: t.to(device) for n, t in st["alignment_weights"].items()}
        self.finetune_weights = {n: t.to(device) for n, t in st["finetune_weights"].items()}
        self.step_mode = s.mode
        return st


def state_summary(st: dict[str, Any]) -> dict[str, Any]:
    """The state without tensors, and digests of both copies: evidence that a resume restored it."""
    return {k: st[k] for k in ("global_step", "mode", "steps", "clock", "switches", "guide_position")} | {
        "alignment_digest": tensor_digest(st["alignment_weights"]),
        "finetune_digest": tensor_digest(st["finetune_weights"])}


def build(job: JobFile) -> tuple[Setup, LisaTrainer]:
    """Model, data and the LisaTrainer of one rank, with the Lisa state of job.resume_from restored."""
    params = LisaParams.model_validate(job.params)
    s = setup(job, params)
    guide_ds = None
    if params.guide_data_num > 0:
        guide_records = to_records(role_rows(job.data, "guide"), "guide")[: params.guide_data_num]
        guide_ds = SFTDataset.from_records(guide_records, s.template, s.tokenizer, job.training.max_length)
        log.info("guide data: %d samples", len(guide_ds))
    recorder = s.rank.recorder(s.train_ds.sample_ids + (guide_ds.sample_ids if guide_ds is not None else []))
    trainer = LisaTrainer(model=s.model, args=s.args, train_dataset=s.train_ds, eval_dataset=s.eval_ds,
                          data_collator=SFTCollator(s.tokenizer.pad_token_id), processing_class=s.tokenizer,
                          callbacks=s.rank.training_callbacks(), recorder=recorder, lisa=params, guide_ds=guide_ds,
                          guide_offset=len(s.train_ds), rank=s.rank.rank, world_size=s.rank.ranks.world_size)
    if job.resume_from:
        summary = state_summary(trainer.load_lisa_state(job.resume_from))
        log.info("Lisa state restored from %s: %s", job.resume_from, summary)
        write_json(s.rank.jd.seen / f"lisa-restored-rank-{s.rank.rank}.attempt-{job.attempt}.json", summary)
    return s, trainer


def run(job: JobFile) -> int:
    s, trainer = build(job)
    out = trainer.train(resume_from_checkpoint=job.resume_from)
    sched = trainer.schedule
    extra = {"lisa_steps": float(sched.steps), "lisa_switches": float(sched.switches),
             "lisa_final_alignment": float(sched.mode == "alignment")}
    return finish_training(s.rank, trainer, out, save_to=s.rank.jd.adapter if trainer.lisa.save_adapter else None,
                           adapter=True, model=s.model, extra_metrics=extra)
