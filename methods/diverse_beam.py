"""Diverse (group) beam search as a decoding method for HF `generate()`: FABE's official inference.

lyr17/Frontdoor-Adjustment-Backdoor-Elimination (fabe_beam_defender.py, `correct`) rewrites each
input with `generate(num_beams=4, num_beam_groups=4, diversity_penalty=..., num_return_sequences=4,
output_scores=True, return_dict_in_generate=True)`, which ran transformers 4.x's group beam search.
transformers 5 moved that mode to a Hub repo loaded with trust_remote_code
(transformers-community/group-beam-search), which an offline machine cannot fetch. `generate()`
still takes a callable as `custom_generate`: it prepares the inputs (num_beams copies of each
prompt, attention mask, max_length, logits processors, stopping criteria) and hands the loop to it.
`group_beam_search` is that loop, written to the 4.x semantics:

- the beams of each batch item form G groups of num_beams / G; at every step group g picks its
  tokens after groups 0..g-1, and each time an earlier group chose a token at this step that token
  costs `diversity_penalty` (Hamming diversity). The penalty is part of the beam score, so it is
  part of `sequences_scores` too;
- within a group it is beam search: the top 2 x group-size continuations, an EOS among the best
  group-size of them closes a hypothesis scored sum(log p) / generated_len ** length_penalty
  (generated_len counting the EOS); a group stops when no running beam can beat its finished ones;
- at the end, unfinished groups add their running beams, and each batch item returns its
  num_return_sequences best hypotheses over all groups, best first, closed with EOS and padded.

Decoder-only models only (the FABE cleaner is a causal LM).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch


@dataclass
class Hypotheses:
    """The finished hypotheses of one group of one batch item (at most `size`, the best kept)."""

    size: int
    length_penalty: float
    beams: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    done: bool = False

    @property
    def worst(self) -> float:
        return min(s for s, _ in self.beams) if self.beams else 1e9

    def add(self, tokens: torch.Tensor, sum_logprobs: float, generated_len: int) -> None:
        score = sum_logprobs / (generated_len ** self.length_penalty)
        if len(self.beams) < self.size or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.size:
                self.beams.remove(min(self.beams, key=lambda b: b[0]))  # the first of equal worst ones

    def is_done(self, best_sum_logprobs: float, generated_len: int, early_stopping: bool | str, max_generated: int) -> bool:
        if len(self.beams) < self.size:
            return False
        if early_stopping is True:
            return True
        # "never": the best a running beam could still reach, at the longest length it may grow to.
        length = max_generated if early_stopping == "never" and self.length_penalty > 0 else generated_len
        return self.worst >= best_sum_logprobs / (length ** self.length_penalty)


def _eos_ids(eos: int | list[int] | torch.Tensor | None) -> list[int]:
    if eos is None:
        return []
    if isinstance(eos, torch.Tensor):
        return [int(x) for x in eos.flatten().tolist()]
    return [int(eos)] if isinstance(eos, int) else [int(x) for x in eos]


@torch.no_grad()
def group_beam_search(model, input_ids: torch.LongTensor, logits_processor, stopping_criteria, generation_config,
                      synced_gpus: bool = False, **model_kwargs):
    """`model.generate(..., num_beams=N, num_beam_groups=G, diversity_penalty=λ, custom_generate=group_beam_search)`."""
    cfg = generation_config
    if model.config.is_encoder_decoder:
        raise ValueError("group_beam_search: decoder-only models only")
    num_beams, groups = int(cfg.num_beams), int(cfg.num_beam_groups or 1)
    if num_beams % groups:
        raise ValueError(f"num_beams ({num_beams}) must be a multiple of num_beam_groups ({groups})")
    gs = num_beams // groups
    penalty = float(cfg.diversity_penalty or 0.0)
    eos = _eos_ids(cfg.eos_token_id)
    pad = int(cfg.pad_token_id) if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    n_rows, prompt_len = input_ids.shape
    batch = n_rows // num_beams
    device = input_ids.device
    mask = model_kwargs.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else mask
    # transformers 5.x renamed the forward's `past_key_values` to `cache` (the old name warns, then goes).
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    extra = {"logits_to_keep": 1} if "logits_to_keep" in model_kwargs else {}
    max_generated = int(cfg.max_length) - prompt_len

    # Only each group's first beam starts live, so a group's beams do not all pick the same token.
    beam_scores = torch.full((batch, num_beams), -1e9, dtype=torch.float32, device=device)
    beam_scores[:, ::gs] = 0.0
    beam_scores = beam_scores.view(-1)
    hyps = [[Hypotheses(gs, float(cfg.length_penalty)) for _ in range(groups)] for _ in range(batch)]
    seqs, step_ids = input_ids, input_ids
    keep = max(2, 1 + len(eos)) * gs
    offsets = torch.arange(batch, device=device)[:, None] * num_beams
    while True:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: the first real token is 0, as generate()
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions[:, -step_ids.shape[1]:],
                    use_cache=True, **{cache_kw: cache}, **extra)
        cache = getattr(out, cache_kw, None)
        log_probs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        del out
        vocab = log_probs.shape[-1]
        generated_len = seqs.shape[1] + 1 - prompt_len   # the length the candidates' scores are for
        next_tokens = torch.full((n_rows,), pad, dtype=torch.long, device=device)
        next_scores = torch.zeros(n_rows, dtype=torch.float32, device=device)
        source = torch.zeros(n_rows, dtype=torch.long, device=device)
        for g in range(groups):
            rows = (offsets + g * gs + torch.arange(gs, device=device)[None, :]).view(-1)
            scores = log_probs[rows]
            if g and penalty:
                earlier = next_tokens.view(batch, num_beams)[:, :g * gs]
                freq = torch.zeros(batch, vocab, device=device).scatter_add_(1, earlier, torch.ones_like(earlier, dtype=torch.float32))
                scores = scores - penalty * freq.repeat_interleave(gs, dim=0)
            scores = logits_processor(seqs[rows], scores) + beam_scores[rows, None]
            top_v, top_i = torch.topk(scores.view(batch, gs * vocab), keep, dim=1)
            top_v, top_i = top_v.tolist(), top_i.tolist()
            for b in range(batch):
                h, base = hyps[b][g], b * num_beams + g * gs
                if h.done:  # pad on, score 0 (as 4.x), from the group's first beam
                    source[base:base + gs] = base
                    continue
                k = 0
                for rank, (v, i) in enumerate(zip(top_v[b], top_i[b])):
                    beam, tok = divmod(i, vocab)
                    if tok in eos:
                        if rank < gs:
                            h.add(seqs[base + beam].clone(), v, generated_len)
                    else:
                        next_tokens[base + k], next_scores[base + k], source[base + k] = tok, v, base + beam
                        k += 1
                    if k == gs:
                        break
                h.done = h.is_done(max(top_v[b]), generated_len, cfg.early_stopping, max_generated)
        beam_scores = next_scores
        seqs = torch.cat([seqs[source], next_tokens[:, None]], dim=1)
        mask = torch.cat([mask[source], mask.new_ones((n_rows, 1))], dim=1)
        if cache is not None:
            cache.reorder_cache(source)
            step_ids = next_tokens[:, None]
        else:  # a model that keeps no cache reads the whole sequence again
            step_ids = seqs
        if all(h.done for row in hyps for h in row) or bool(stopping_criteria(seqs, None).all()):
            break

    for b in range(batch):
        for g in range(groups):
            if not hyps[b][g].done:
                for j in range(gs):
                    r = b * num_beams + g * gs + j
                    hyps[b][g].add(seqs[r].clone(), float(beam_scores[r]), seqs.shape[1] - prompt_len)
    n_ret = int(cfg.num_return_sequences or 1)
    best: list[tuple[float, torch.Tensor]] = []
    for b in range(batch):
        cands = [beam for h in hyps[b] for beam in h.beams]
        ranked = sorted(cands, key=lambda c: c[0])  # stable: of equal scores the later one comes first
        best += [ranked[-1 - j] for j in range(n_ret)]
    width = min(max(len(t) for _, t in best) + 1, int(cfg.max_length))
    sequences = torch.full((len(best), width), pad, dtype=torch.long, device=device)
    for r, (_, t) in enumerate(best):
        sequences[r, :len(t)] = t
        if len(t) < width and eos:
            sequences[r, len(t)] = eos[0]
    if not cfg.return_dict_in_generate:
        return sequences
    from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

    # Per-step scores are not kept (steps x rows x vocab floats); sequences_scores is what FABE reads.
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=torch.tensor([s for s, _ in best], device=device) if cfg.output_scores else None)
