"""The model under evaluation and greedy batched generation (Lisa's poison/evaluation/pred.py and
sst2/pred_eval.py, batched: left padding, one generate() call per batch).

The model is the base plus its adapter chain: a stage-2 adapter was trained on top of its stage-1
adapter (merged into the base, or stacked under it), and its job's result.json names that start
adapter. Both are LoRA deltas on the same weights, so merging the chain in order (start adapter
first) reproduces the trained function in either mode, as pred.py merges --lora_folder then
--lora_folder2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from launcher.contract import read_json, ModelSpec
from methods.data import Template
from methods.models import load_base_model, load_tokenizer

log = logging.getLogger(__name__)


def adapter_chain(adapter: str | None) -> list[str]:
    """Adapters to merge, oldest first: follow start_adapter through the result.json that sits
    next to each adapter dir (jobs/<job>/adapter and jobs/<job>/result.json)."""
    chain: list[str] = []
    seen: set[Path] = set()
    while adapter:
        path = Path(adapter).resolve()
        if path in seen:
            raise ValueError(f"adapter chain loops at {path}")
        seen.add(path)
        chain.append(str(path))
        result = read_json(path.parent / "result.json") or {}
        # Only a result that names this very adapter dir describes how it was trained.
        if not result.get("adapter") or Path(result["adapter"]).resolve() != path:
            break
        adapter = result.get("start_adapter")
    return chain[::-1]


def load_eval_model(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[str]]:
    from peft import PeftModel

    tokenizer = load_tokenizer(spec)
    model = load_base_model(spec, tokenizer, dtype)
    chain = adapter_chain(spec.adapter)
    for adapter in chain:
        log.info("merging adapter %s", adapter)
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False).merge_and_unload()
    model.to(device).eval()
    return model, tokenizer, chain


@dataclass(frozen=True)
class GenerationSpec:
    batch_size: int
    max_new_tokens: int
    max_prompt_length: int


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS and the model's own stop tokens (chat models end turns with their own)."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], template: Template,
             spec: GenerationSpec, on_batch: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy completions of `prompts`, in order. Prompts are batched by length (less padding),
    left-padded so every row's last prompt token sits at the same position, and over-long prompts
    lose their head (the template's response cue is at the end)."""
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    add_special = template != "chat"  # as in training: chat templates write their own BOS
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=spec.max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids(model, tokenizer),
                              bos_token_id=tokenizer.bos_token_id)
    lengths = [len(tokenizer(p, add_special_tokens=add_special)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    n_batches = -(-len(order) // spec.batch_size)
    for b in range(n_batches):
        idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                        max_length=spec.max_prompt_length, add_special_tokens=add_special).to(device)
        gen = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=config)
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = t.strip()
        if on_batch is not None:
            on_batch(b + 1, n_batches)
    return out
