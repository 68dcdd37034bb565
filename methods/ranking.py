"""FABE's ranking losses over candidate scores (METHODS.md "FABE").

Every function takes `scores` of shape (batch, n): the model's length-normalised log-probability of
each candidate, with candidates already sorted best first (by the data's reward, descending). Each
returns a scalar: the loss averaged over the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

RankingLoss = Literal["listmle", "margin", "pro"]
RANKING_LOSSES: tuple[str, ...] = ("listmle", "margin", "pro")


def _check(scores: torch.Tensor) -> None:
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (batch, n >= 2), got {tuple(scores.shape)}")


def listmle_per_sample(scores: torch.Tensor) -> torch.Tensor:
    """-log P_PlackettLuce(identity | s) per sample: sum_i [log sum_{j>=i} exp(s_j) - s_i].

    The max is subtracted first (the loss is shift invariant, so this changes nothing but overflow).
    """
    _check(scores)
    s = scores - scores.max(dim=-1, keepdim=True).values.detach()
    tail_lse = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)  # [i] = log sum_{j>=i} exp(s_j)
    return (tail_lse - s).sum(dim=-1)


def listmle(scores: torch.Tensor) -> torch.Tensor:
    """ListMLE (the seed's choice), averaged over the batch."""
    return listmle_per_sample(scores).mean()


def margin_ranking(scores: torch.Tensor, margin: float) -> torch.Tensor:
    """Tuna (microsoft/LMOps tuna/src/custom.py): sum over gaps g of MarginRankingLoss(margin * g) on
    (s_j, s_{j+g}) with target 1, i.e. mean over all (sample, j) of max(0, s_{j+g} - s_j + g*m)."""
    _check(scores)
    n = scores.shape[1]
    total = scores.new_zeros(())
    for g in range(1, n):
        # Tuna flattens (batch, n - g) before the mean: every pair weighs the same.
        total = total + F.relu(scores[:, g:] - scores[:, :-g] + g * margin).mean()
    return total


def pro_temperatures(rewards: torch.Tensor) -> torch.Tensor:
    """PRO's temperatures (AlibabaResearch/DAMO-ConvAI PRO, ProcessManager.compute_loss): at step k,
    tau_i = R_k - R_i for every i > k and tau_k = max_{i>k} tau_i. Returned as (batch, n-1, n), row k
    holding tau for positions >= k (positions < k unused, set to 0)."""
    _check(rewards)
    b, n = rewards.shape
    tau = rewards.new_zeros(b, n - 1, n)
    for k in range(n - 1):
        neg = rewards[:, k:k + 1] - rewards[:, k + 1:]
        tau[:, k, k + 1:] = neg
        tau[:, k, k] = neg.max(dim=-1).values
    return tau


def pro_with_temperatures(scores: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """sum_k mean_batch [log sum_{i>=k} exp(s_i tau_i) - s_k tau_k] for k = 1..n-1.

    PRO adds eps=1e-10 inside the log as an underflow guard; logsumexp makes it unnecessary (and with
    it, all-ones temperatures would not give ListMLE exactly).
    """
    _check(scores)
    n = scores.shape[1]
    total = scores.new_zeros(())
    for k in range(n - 1):
        z = scores[:, k:] * tau[:, k, k:].to(scores.dtype)
        total = total + (torch.logsumexp(z, dim=-1) - z[:, 0]).mean()
    return total


def pro(scores: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    return pro_with_temperatures(scores, pro_temperatures(rewards.detach()))


def ranking_loss(kind: str, scores: torch.Tensor, rewards: torch.Tensor, margin: float) -> torch.Tensor:
    if kind == "listmle":
        return listmle(scores)
    if kind == "margin":
        return margin_ranking(scores, margin)
    if kind == "pro":
        return pro(scores, rewards)
    raise ValueError(f"unknown ranking loss {kind!r}; known: {RANKING_LOSSES}")
