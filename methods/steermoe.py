"""SteerMoE expert-only training (method `steermoe`): freeze everything (attention, norms, router,
embeddings, head) and train only the MLP weights of the experts the analysis selected, on the same
batches the analysis used (k safe + k unsafe each, whole batches per rank).

transformers 5.x fuses a layer's experts into `mlp.experts.gate_up_proj` [E, 2I, H] and
`mlp.experts.down_proj` [E, H, I]: those tensors become trainable and a gradient hook zeroes the
slices of non-selected experts before DeepSpeed or the optimizer sees them. They also get weight
decay 0: AdamW's decoupled decay would shrink the frozen slices. With a zero gradient from the first
step, Adam's moments stay 0 and the update is exactly 0, so frozen slices stay bitwise unchanged, in
DeepSpeed's fp32 master copy as in the model (checked at the end of training; METHODS.md invariant).

The loss is the prompt-masked causal LM loss over all samples of the batch (safe prompts with their
answers, unsafe prompts with the target response, e.g. a refusal).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from launcher.contract import JobFile
from methods.core.precision import DTYPES, resolve_precision
from methods.core.rank import RankJob
from methods.core.training import MethodTrainer, finish_training, training_arguments
from methods.data import SFTCollator, SFTDataset, read_rows, resolve_template
from methods.models import load_base_model, load_tokenizer
from methods.params import SteerMoEParams
from methods.steermoe_analysis import EXPERTS_FILE, read_analysis, run_analysis, selected_pairs
from methods.steermoe_data import batches_from_rows

log = logging.getLogger(__name__)
EXPERTS_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.experts$")
MODEL_DIR = "model"


# ---- which tensors train, and the gradient masks ---------------------------------------------------

def _mask_grad(grad: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # where(), not multiply: exact +0 in the frozen slices (0 * -x would give -0, and 0 * inf NaN).
    return torch.where(keep.to(grad.device), grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


@dataclass
class ExpertTraining:
    """What freeze_all_but_experts set up: trainable tensor names, their per-expert masks, hooks."""

    selected: list[tuple[int, int]]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # fused tensor name -> bool (E,) selected experts
    trainable: list[str] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)

    def trainable_elements(self, model: torch.nn.Module) -> int:
        params = dict(model.named_parameters())
        n = 0
        for name in self.trainable:
            p = params[name]
            n += p[0].numel() * int(self.masks[name].sum()) if name in self.masks else p.numel()
        return n


def expert_modules(model: torch.nn.Module) -> dict[int, tuple[str, torch.nn.Module]]:
    found = {}
    for name, mod in model.named_modules():
        m = EXPERTS_RE.search(name)
        if m:
            found[int(m.group(1))] = (name, mod)
    if not found:
        raise ValueError(f"{type(model).__name__} has no `layers.<i>.mlp.experts` modules")
    return found


def freeze_all_but_experts(model: torch.nn.Module, selected: Sequence[tuple[int, int]]) -> ExpertTraining:
    if not selected:
        raise ValueError("no experts selected: nothing to train (check the analysis's selection parameters)")
    for p in model.parameters():
        p.requires_grad_(False)
    modules = expert_modules(model)
    by_layer: dict[int, list[int]] = {}
    for layer, e in selected:
        by_layer.setdefault(layer, []).append(e)
    out = ExpertTraining(selected=sorted(set(selected)))
    for layer, experts in sorted(by_layer.items()):
        if layer not in modules:
            raise ValueError(f"selected layer {layer} does not exist (layers: {sorted(modules)})")
        prefix, mod = modules[layer]
        if isinstance(mod, torch.nn.ModuleList):  # unfused experts (older transformers): train whole submodules
            for e in experts:
                for pname, p in mod[e].named_parameters():
                    p.requires_grad_(True)
                    out.trainable.append(f"{prefix}.{e}.{pname}")
            continue
        fused = [(n, p) for n, p in mod.named_parameters(recurse=False) if p.ndim == 3]
        if not fused:
            raise ValueError(f"{prefix} has neither fused [E, ., .] expert tensors nor a ModuleList of experts")
        for pname, p in fused:
            keep = torch.zeros(p.shape[0], dtype=torch.bool)
            if max(experts) >= p.shape[0]:
                raise ValueError(f"selected expert {max(experts)} in layer {layer}, which has {p.shape[0]}")
            keep[experts] = True
            full = f"{prefix}.{pname}"
            p.requires_grad_(True)
            out.masks[full] = keep
            out.trainable.append(full)
            out.hooks.append(p.register_hook(partial(_mask_grad, keep=keep.view(-1, *([1] * (p.ndim - 1))))))
    return out


def frozen_fingerprint(model: torch.nn.Module, setup: ExpertTraining) -> dict[str, str]:
    """A hash of every frozen tensor and of every non-selected expert slice of the trainable ones: the
    bitwise invariant, checked before vs after training without keeping a copy of the model."""
    def h(t: torch.Tensor) -> str:
        t = t.detach().cpu().contiguous()
        return hashlib.blake2b(t.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()

    trainable = set(setup.trainable)
    out = {}
    for name, p in model.named_parameters():
        if name not in trainable:
            out[name] = h(p)
        elif name in setup.masks:
            for e in torch.nonzero(~setup.masks[name]).flatten().tolist():
                out[f"{name}[{e}]"] = h(p[e])
    return out


# ---- batches: the analysis batches, whole, disjoint per rank --------------------------------------

class AnalysisBatchSampler:
    """Yields whole analysis batches (the same k safe + k unsafe samples, in order). Each epoch the order
    of the batches is shuffled with seed + epoch (same on every rank); rank r takes positions r, r + W,
    ... of that order, cut to a multiple of W so every rank makes the same number of steps."""

    drop_last = True  # read by accelerate's BatchSamplerShard: no wrap-around padding

    def __init__(self, batches: Sequence[Sequence[int]], rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0):
        if not batches or len({len(b) for b in batches}) != 1:
            raise ValueError("analysis batches must be non-empty and of one size")
        if len(batches) < world_size:
            raise ValueError(f"{len(batches)} batches cannot feed {world_size} ranks")
        self.batches = [list(b) for b in batches]
        self.rank, self.world_size, self.shuffle, self.seed = rank, world_size, shuffle, seed
        self.batch_size = len(self.batches[0])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.batches), generator=g).tolist()
        else:
            order = list(range(len(self.batches)))
        return order[: len(self) * self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        for pos in self.order()[self.rank::self.world_size]:
            yield list(self.batches[pos])

    def __len__(self) -> int:
        return len(self.batches) // self.world_size


class SteerMoETrainer(MethodTrainer):
    def __init__(self, *args: Any, analysis_batches: Sequence[Sequence[int]], shuffle_batches: bool,
                 no_decay: Sequence[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.analysis_batches = analysis_batches
        self.shuffle_batches = shuffle_batches
        self.no_decay = set(no_decay)

    def get_train_dataloader(self) -> DataLoader:
        sampler = AnalysisBatchSampler(self.analysis_batches, rank=self.args.process_index,
                                       world_size=self.args.world_size, shuffle=self.shuffle_batches, seed=self.args.seed)
        loader = self.accelerator.prepare(DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                                                     num_workers=self.args.dataloader_num_workers))
        # The sampler is rank-aware already: make accelerate's BatchSamplerShard a pass-through, as the
        # Trainer itself does for its rank-aware BatchRebalanceSampler.
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
            shard.num_processes, shard.process_index = 1, 0
        return loader

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        # Weight decay 0 on the masked expert tensors: decoupled decay would move the frozen slices.
        return [n for n in super().get_decay_parameter_names(model) if n not in self.no_decay]


# ---- the job ------------------------------------------------------------------------------------

def run(job: JobFile) -> int:
    rank = RankJob.start(job, needs_model=" (a mixture of experts, e.g. OLMoE)")
    params = SteerMoEParams.model_validate(job.params)
    per_batch = params.safe_per_batch + params.unsafe_per_batch
    if job.training.batch_size != per_batch:
        raise ValueError(f"training.batch_size must be safe_per_batch + unsafe_per_batch = {per_batch}: "
                         f"each micro-batch is one whole analysis batch")
    if job.training.lora is not None:
        log.warning("training.lora is ignored: SteerMoE trains the selected experts' own weights")
    precision = resolve_precision(job.training.precision)
    args = training_arguments(job, precision, has_eval=False)
    _ = args.device  # sets up the process group (DeepSpeed/accelerate) so the analysis can use it

    tokenizer = load_tokenizer(job.model)
    model = load_base_model(job.model, tokenizer, DTYPES[precision])
    samples = batches_from_rows(read_rows(job.data["train"]), params.safe_per_batch, params.unsafe_per_batch,
                                same_prompt=params.tokens == "target")
    own = rank.jd.root / EXPERTS_FILE
    # A resumed attempt keeps the experts its checkpoint trained (on GPUs a re-run analysis might differ).
    source = job.data["experts"].source if "experts" in job.data else (str(own) if job.resume_from and own.is_file() else None)
    if source is not None:
        analysis = read_analysis(source)
        if analysis["batches"] != samples.batch_ids():
            raise ValueError("the analysis file was made from other batches (data, safe/unsafe_per_batch differ)")
        log.info("experts from %s", source)
    else:
        rank.heartbeat.beat("evaluating")
        model.to(args.device)
        analysis = run_analysis(job, params, model, tokenizer, samples, rank.ranks, on_batch=rank.heartbeat.advance)
    setup = freeze_all_but_experts(model, selected_pairs(analysis))
    before = frozen_fingerprint(model, setup)
    total = sum(p.numel() for p in model.parameters())
    log.info("training %d experts: %d of %d parameters (%s)", len(setup.selected), setup.trainable_elements(model),
             total, ", ".join(setup.trainable))
    if job.training.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path

    template = resolve_template(params.template, tokenizer)
    train_ds = SFTDataset.from_records(samples.records, template, tokenizer, job.training.max_length)
    trainer = SteerMoETrainer(
        model=model, args=args, train_dataset=train_ds, data_collator=SFTCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=rank.training_callbacks(), recorder=rank.recorder(train_ds.sample_ids),
        analysis_batches=samples.batches, shuffle_batches=params.shuffle_batches, no_decay=list(setup.masks),
    )
    out = trainer.train(resume_from_checkpoint=job.resume_from)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if any(hasattr(p, "ds_id") for p in trained.parameters()):
        log.warning("ZeRO-3 partitions the weights: the frozen-weights check is left to the saved model")
        before = {}
    after = frozen_fingerprint(trained, setup) if before else {}
    changed = sorted(k for k in before if before[k] != after.get(k))
    if changed:
        raise RuntimeError(f"frozen weights changed during training: {changed[:8]}")
    extra = {"experts_trained": float(len(setup.selected)), "trainable_elements": float(setup.trainable_elements(model)),
             "frozen_checked": float(len(before)), "frozen_changed": float(len(changed))}
    # The whole model (the trained experts are its own weights, not an adapter).
    return finish_training(rank, trainer, out, save_to=rank.jd.root / MODEL_DIR if params.save_model else None,
                           adapter=False, extra_metrics=extra)
