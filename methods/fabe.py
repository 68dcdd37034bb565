"""FABE cleaner training: alpha * MLE + beta * ranking loss over scored candidate rewrites.

Score of a candidate: s_i = mean log-probability of its response tokens (length-normalised), from one
forward pass over all B x n candidates of the batch (METHODS.md "FABE"). MLE is the token-mean NLL of
the best candidate (`mle_on: best`, default) or of all candidates (`mle_on: all`, as Tuna does).

`run(job)` is what `python -m methods JOB.json` calls on every rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from launcher.contract import JobFile
from methods.core.finetune import lora_model
from methods.core.training import MethodTrainer, finish_training
from methods.data import IGNORE_INDEX, read_rows, resolve_template
from methods.fabe_data import (SHARED_PROMPT_ATTENTION, RankedCollator, RankedDataset, packed_attention_mask,
                               to_ranked_records)
from methods.params import FABEParams
from methods.ranking import ranking_loss

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class FABELossConfig:
    alpha: float = 1.0
    beta: float = 0.3
    ranking: str = "listmle"
    margin: float = 0.1
    mle_on: str = "best"

    @classmethod
    def from_params(cls, p: FABEParams) -> "FABELossConfig":
        return cls(alpha=p.alpha, beta=p.beta, ranking=p.ranking_loss, margin=p.margin, mle_on=p.mle_on)


def token_logprobs(logits: torch.Tensor, rows: torch.Tensor, pred_pos: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """log p(label) at each (sample, candidate, token), 0 where the label is -100. Picks single logits
    and one logsumexp per predicting position instead of a full log_softmax copy of the logits."""
    valid = labels != IGNORE_INDEX
    target = labels.clamp(min=0)
    picked = logits[rows, pred_pos, target].float()
    lse = torch.logsumexp(logits.float(), dim=-1)[rows, pred_pos]
    return torch.where(valid, picked - lse, torch.zeros_like(picked))


def candidate_scores(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores (B, n) length-normalised, summed log-probs (B, n), token counts (B, n))."""
    lp = token_logprobs(logits, batch["rows"], batch["pred_pos"], batch["labels"])
    counts = (batch["labels"] != IGNORE_INDEX).sum(-1)
    if (counts == 0).any():
        raise ValueError("a candidate has no response tokens (max_length too small?)")
    sums = lp.sum(-1)
    return sums / counts, sums, counts


def forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], attn_implementation: str) -> torch.Tensor:
    """All candidates of the batch in one forward pass, in whichever layout the collator built."""
    if "segments" in batch:
        dtype = next(p for p in model.parameters()).dtype
        mask = packed_attention_mask(batch["segments"], attn_implementation, dtype)
        out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], use_cache=False)
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits


def fabe_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: FABELossConfig,
              attn_implementation: str = "sdpa") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = forward_logits(model, batch, attn_implementation)
    scores, sums, counts = candidate_scores(logits, batch)
    if cfg.mle_on == "best":
        mle = -sums[:, 0].sum() / counts[:, 0].sum()
    else:
        mle = -sums.sum() / counts.sum()
    rank = ranking_loss(cfg.ranking, scores, batch["rewards"].to(scores.device), cfg.margin)
    loss = cfg.alpha * mle + cfg.beta * rank
    return loss, {"mle_loss": mle.detach(), "rank_loss": rank.detach(), "scores": scores.detach()}


class FABETrainer(MethodTrainer):
    """Computes FABE's loss from the logits (the model is never given labels). The loss is a per-batch
    mean, so the Trainer divides it by the accumulation steps (loss_is_scaled_for_ga = False)."""

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, loss_config: FABELossConfig, attn_implementation: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.attn_implementation = attn_implementation
        self._parts: dict[str, list[float]] = {"mle_loss": [], "rank_loss": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        indices = inputs.pop("sample_index", None)
        if indices is not None and self.recorder is not None and model.training:
            self.recorder.record(self.state.global_step + 1, indices)
        loss, parts = fabe_loss(model, inputs, self.loss_config, self.attn_implementation)
        if model.training:
            for k in self._parts:
                self._parts[k].append(float(parts[k]))
        return (loss, parts) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The two loss terms, averaged over the micro-batches since the last log (this rank's view).
        if "loss" in logs and self._parts["mle_loss"]:
            for k, vals in self._parts.items():
                logs[k] = sum(vals) / len(vals)
                vals.clear()
        super().log(logs, start_time)


def training_dropout(model: torch.nn.Module) -> list[str]:
    """Where dropout acts while training: Dropout modules with p > 0 (PEFT's lora_dropout among them)
    and the config's dropout rates > 0 (attention dropout is functional, it has no module)."""
    found = sorted({f"{type(m).__name__}(p={m.p})" for m in model.modules()
                    if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0})
    config = getattr(model, "config", None)
    for key, value in (config.to_dict().items() if config is not None else ()):
        if ("dropout" in key or "pdrop" in key) and type(value) in (int, float) and value > 0:
            found.append(f"config.{key}={value}")
    return found


def use_shared_prompt(requested: bool, attn: str, model: torch.nn.Module) -> tuple[bool, str]:
    """Whether the collator shares each prompt across its candidates, and why not where it does not.
    One prompt copy means one dropout draw for all n candidates' prompt positions, where Tuna runs
    B x n independent rows: with dropout active the two are different estimators, so sharing is off."""
    if not requested:
        return False, "shared_prompt: false"
    if attn not in SHARED_PROMPT_ATTENTION:
        return False, f"attention {attn} takes no custom mask"
    dropout = training_dropout(model)
    if dropout:
        return False, (f"dropout is active in training ({', '.join(dropout)}): a shared prompt would give all "
                       f"candidates one dropout draw, unlike B x n independent rows (Tuna); set "
                       f"training.lora.dropout: 0 to share")
    return True, ""


def run(job: JobFile) -> int:
    params = FABEParams.model_validate(job.params)
    m = lora_model(job)
    rank, tokenizer, model = m.rank, m.tokenizer, m.model
    shared, why_not = use_shared_prompt(params.shared_prompt, m.attn, model)   # after LoRA: its dropout counts
    if params.shared_prompt and not shared:
        log.warning("shared_prompt off, candidates get their own copy of the prompt: %s", why_not)

    template = resolve_template(params.template, tokenizer)
    records = to_ranked_records(read_rows(job.data["train"]), "train", params.num_candidates)
    train_ds = RankedDataset.from_records(records, template, tokenizer, job.training.max_length)
    eval_ds = None
    if m.has_eval:
        eval_ds = RankedDataset.from_records(to_ranked_records(read_rows(job.data["eval"]), "eval", params.num_candidates),
                                             template, tokenizer, job.training.max_length)
    log.info("template %s, %s loss, MLE on %s, %s prompt: %d samples x %d candidates", template, params.ranking_loss,
             params.mle_on, "shared" if shared else "per-candidate", len(train_ds), len(records[0].candidates))

    trainer = FABETrainer(
        model=model,
        args=m.args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=RankedCollator(tokenizer.pad_token_id, shared_prompt=shared),
        processing_class=tokenizer,
        callbacks=rank.training_callbacks(),
        recorder=rank.recorder(train_ds.sample_ids),
        loss_config=FABELossConfig.from_params(params),
        attn_implementation=m.attn,
    )
    out = trainer.train(resume_from_checkpoint=job.resume_from)
    return finish_training(rank, trainer, out, save_to=rank.jd.adapter if params.save_adapter else None, adapter=True,
                           model=model)
