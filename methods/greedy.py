"""Batched greedy generation from token ids (left padding), shared by the FABE and SteerMoE jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder-only generation continues from the last column, so prompts are padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as generate() computes them: the first real token is 0."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class Generated:
    prompt_ids: list[int]
    new_ids: list[int]      # up to, not including, the first stop token
    stopped: bool           # a stop token ended it (else max_new_tokens did)


def stop_ids(model: torch.nn.Module, eos_token_id: int | None) -> list[int]:
    """The tokenizer's EOS plus whatever the model's generation config stops on (chat models end a
    turn with their own token, e.g. <|im_end|>)."""
    ids = {eos_token_id} if eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int, eos_token_id: int | None,
                    max_new_tokens: int, batch_size: int, device: torch.device | str = "cpu",
                    on_batch: Callable[[], None] | None = None) -> list[Generated]:
    """Greedy continuations, batch by batch; `on_batch` after each (the heartbeat's progress)."""
    stops = stop_ids(model, eos_token_id)
    out: list[Generated] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=stops or None,
                             temperature=None, top_p=None, top_k=None)
        for prompt, row in zip(chunk, gen[:, ids.shape[1]:].tolist()):
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            new = row if cut is None else row[:cut]
            out.append(Generated(prompt_ids=list(prompt), new_ids=new, stopped=cut is not None))
        if on_batch is not None:
            on_batch()
    return out
