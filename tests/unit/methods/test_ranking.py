"""FABE's ranking losses against independent reference computations (METHODS.md invariants)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from methods.ranking import (listmle, listmle_per_sample, margin_ranking, pro, pro_temperatures, pro_with_temperatures,
                             ranking_loss)


def plackett_luce(scores: list[float], perm: tuple[int, ...]) -> float:
    """P(perm | s) by the sequential-choice definition, plain floats: pick perm[0] among all, then
    perm[1] among the rest, ..."""
    p = 1.0
    rest = list(perm)
    for i in perm:
        p *= math.exp(scores[i]) / sum(math.exp(scores[j]) for j in rest)
        rest.remove(i)
    return p


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_listmle_is_minus_log_plackett_luce_for_every_permutation(n):
    g = torch.Generator().manual_seed(n)
    s = torch.randn(n, generator=g, dtype=torch.float64) * 2
    total = 0.0
    for perm in itertools.permutations(range(n)):
        p = plackett_luce(s.tolist(), perm)
        total += p
        # ListMLE of the list ordered as perm (best first) is -log P(perm).
        assert listmle(s[list(perm)][None]).item() == pytest.approx(-math.log(p), rel=1e-10, abs=1e-12)
    assert total == pytest.approx(1.0, abs=1e-12)  # the reference is a distribution over permutations


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_listmle_equal_scores_is_log_n_factorial(n):
    s = torch.full((3, n), -1.7, dtype=torch.float64)
    assert torch.allclose(listmle_per_sample(s), torch.full((3,), math.log(math.factorial(n)), dtype=torch.float64))


def test_listmle_two_candidates_is_softplus_of_the_gap():
    s = torch.tensor([[0.3, -1.2], [-2.0, 0.5], [4.0, 4.0]], dtype=torch.float64)
    expected = torch.nn.functional.softplus(s[:, 1] - s[:, 0])
    assert torch.allclose(listmle_per_sample(s), expected)


def test_listmle_shift_invariant_and_stable():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 3, generator=g, dtype=torch.float64)
    base = listmle(s)
    for c in (5.0, -300.0, 1e4):
        assert listmle(s + c).item() == pytest.approx(base.item(), rel=1e-9)
    assert torch.isfinite(listmle(torch.tensor([[1e4, -1e4, 0.0]]))).all()


def tuna_reference(s: torch.Tensor, m: float) -> torch.Tensor:
    """The loop of microsoft/LMOps tuna/src/custom.py with torch's own MarginRankingLoss."""
    loss = s.new_zeros(())
    for i in range(1, s.shape[1]):
        pos, neg = s[:, :-i].reshape(-1), s[:, i:].reshape(-1)
        loss = loss + torch.nn.MarginRankingLoss(m * i)(pos, neg, torch.ones_like(pos))
    return loss


def test_margin_matches_tunas_loop():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.2
    for m in (0.0, 0.1, 0.5):
        assert margin_ranking(s, m).item() == pytest.approx(tuna_reference(s, m).item(), rel=1e-12)


def test_margin_zero_when_separated_by_m_times_gap():
    m = 0.125  # exact in binary, so "exactly m apart" is exact too
    # Consecutive scores at least m apart: every gap g is then at least g*m.
    s = torch.tensor([[0.0, -0.125, -0.25, -0.5], [3.0, 2.5, 2.375, 1.0]], dtype=torch.float64)
    assert margin_ranking(s, m).item() == 0.0
    closer = s.clone()
    closer[0, 1] = -0.0625
    assert margin_ranking(closer, m).item() > 0.0


def pro_reference(scores: list[float], rewards: list[float]) -> float:
    """PRO's ProcessManager.compute_loss for one sample, in plain floats (without its 1e-10 guard)."""
    n = len(scores)
    total = 0.0
    for k in range(n - 1):
        neg_t = [rewards[k] - rewards[i] for i in range(k + 1, n)]
        pos_t = max(neg_t)
        z = [scores[k] * pos_t] + [scores[i] * t for i, t in zip(range(k + 1, n), neg_t)]
        total += math.log(sum(math.exp(v) for v in z)) - scores[k] * pos_t
    return total


def test_pro_matches_the_official_formula():
    s = torch.tensor([[-0.4, -0.9, -1.3], [-0.2, -0.1, -2.0]], dtype=torch.float64)
    r = torch.tensor([[3.0, 1.5, -1.0], [2.0, 1.0, 1.0]], dtype=torch.float64)
    expected = sum(pro_reference(s[b].tolist(), r[b].tolist()) for b in range(2)) / 2
    assert pro(s, r).item() == pytest.approx(expected, rel=1e-12)
    tau = pro_temperatures(r)
    assert tau[0, 0].tolist() == [4.0, 1.5, 4.0] and tau[0, 1].tolist() == [0.0, 2.5, 2.5]


def test_pro_with_unit_temperatures_is_listmle():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64)
    ones = torch.ones(6, 3, 4, dtype=torch.float64)
    assert pro_with_temperatures(s, ones).item() == pytest.approx(listmle(s).item(), rel=1e-12)


def test_losses_have_gradients_and_dispatch():
    s = torch.tensor([[-0.5, -0.7, -0.2]], requires_grad=True)
    r = torch.tensor([[10.0, 2.0, 0.3]])
    for kind in ("listmle", "margin", "pro"):
        loss = ranking_loss(kind, s, r, 0.1)
        (grad,) = torch.autograd.grad(loss, s)
        assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown ranking loss"):
        ranking_loss("dpo", s, r, 0.1)
    with pytest.raises(ValueError, match="n >= 2"):
        listmle(torch.zeros(2, 1))
