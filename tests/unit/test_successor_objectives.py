"""Unit tests of the successor objectives: DMPO, IPO (pairwise and over K), SimPO and softmax
SimPO (reference-free), DynamicPO.

Notation: log-ratio h(y) = log pi(y) - log pi_ref(y); reward r(y) = beta * h(y); SimPO's reward
r(y) = beta * log pi(y) / |y|; chosen p, rejected d_1..d_K. Expected values are written out by
hand in each test's docstring.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from sdpo_lightning.training.dynamicpo import (
    boundary_negatives,
    dynamic_betas,
    dynamicpo_loss,
    top_cluster,
)
from sdpo_lightning.training.multi_negative import dmpo_loss, ipo_k_loss, ipo_loss
from sdpo_lightning.training.objective_base import ObjectiveOutput
from sdpo_lightning.training.reference_free import simpo_loss, softmax_simpo_loss


def _random(batch: int, k: int, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        -torch.rand(*shape, generator=gen, dtype=dtype) * 20
        for shape in ((batch,), (batch, k), (batch,), (batch, k))
    )


def _lengths(batch: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(1, 9, (batch,), generator=gen),
        torch.randint(1, 9, (batch, k), generator=gen),
    )


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def _assert_finite_at_extremes(fn, **kwargs):
    """Loss and gradient stay finite at log-ratio margins of +-1000 (both signs, K = 2)."""
    pc = torch.zeros(2, requires_grad=True)
    pr = torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0]], requires_grad=True)
    out = fn(pc, pr, torch.zeros(2), torch.zeros(2, 2), 1.0, **kwargs)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all(), out.losses
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    return out


# ----------------------------------------------------------------------------- DMPO
class TestDMPO:
    def test_hand_computed(self):
        """beta = 1, reference 0: r(p) = 0, r(d) = [1, -3], mean -1:
        L = -log σ(0 - (-1)) = softplus(-1) = log(1 + e^-1) = 0.31326...
        beta = 2 doubles every reward: L = softplus(-2)."""
        pc, pr = torch.tensor([0.0]), torch.tensor([[1.0, -3.0]])
        out = dmpo_loss(pc, pr, torch.zeros(1), torch.zeros(1, 2), 1.0)
        assert_close(out.losses, torch.tensor([math.log1p(math.exp(-1.0))]))
        assert_close(out.chosen_rewards, torch.tensor([0.0]))
        assert_close(out.rejected_rewards, torch.tensor([[1.0, -3.0]]))
        out2 = dmpo_loss(pc, pr, torch.zeros(1), torch.zeros(1, 2), 2.0)
        assert_close(out2.losses, torch.tensor([math.log1p(math.exp(-2.0))]))

    def test_averages_rewards_not_probabilities(self):
        """With reference 0, r(d) = [0, -20]: mean reward -10, L = softplus(-10) = 4.54e-5;
        averaging probabilities instead, log((e^0 + e^-20) / 2) = -0.693, would give
        softplus(-0.693) = 0.405."""
        out = dmpo_loss(
            torch.zeros(1), torch.tensor([[0.0, -20.0]]), torch.zeros(1), torch.zeros(1, 2), 1.0
        )
        assert_close(out.losses, torch.tensor([math.log1p(math.exp(-10.0))]))

    def test_k1_equals_dpo(self):
        """K = 1: the mean of one reward is that reward, -log σ(r(p) - r(d)) is DPO."""
        from sdpo_lightning.training.objectives import dpo_loss

        pc, pr, rc, rr = _random(8, 1)
        assert_close(dmpo_loss(pc, pr, rc, rr, 0.7).losses, dpo_loss(pc, pr, rc, rr, 0.7).losses)

    def test_gradient_formula(self):
        """dL/dlog pi(p) = -beta s, dL/dlog pi(d_k) = beta s / K with
        s = σ(mean_k r(d_k) - r(p)); here beta = 0.5, reference 0, r(p) = 0.5 * 1,
        r(d) = 0.5 * [2, -4], mean -0.5, s = σ(-1)."""
        pc = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        pr = torch.tensor([[2.0, -4.0]], dtype=torch.float64, requires_grad=True)
        dmpo_loss(
            pc, pr, torch.zeros(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), 0.5
        ).losses.sum().backward()
        s = torch.sigmoid(torch.tensor(-1.0, dtype=torch.float64))
        assert_close(pc.grad, -0.5 * s.reshape(1))
        assert_close(pr.grad, (0.5 * s / 2).expand(1, 2))

    def test_extreme_margins(self):
        """Margin +1000 (negatives far above): L = softplus(1000) = 1000; margin -1000: 0."""
        out = _assert_finite_at_extremes(dmpo_loss)
        assert_close(out.losses, torch.tensor([1000.0, 0.0]))

    def test_gradcheck(self):
        pc, pr, rc, rr = (t.requires_grad_() for t in _random(3, 4))
        assert torch.autograd.gradcheck(lambda *a: dmpo_loss(*a, 0.8).losses, (pc, pr, rc, rr))

    def test_shapes_and_types(self):
        pc, pr, rc, rr = _random(2, 3, dtype=torch.bfloat16)
        out = dmpo_loss(pc, pr, rc, rr, 1.0)
        assert isinstance(out, ObjectiveOutput) and out.losses.dtype == torch.float32
        with pytest.raises(ValueError, match=r"shape \(B, K\)"):
            dmpo_loss(pc, pr[:, 0], rc, rr, 1.0)
        with pytest.raises(ValueError, match="beta"):
            dmpo_loss(pc, pr, rc, rr, 0.0)
        with pytest.raises(ValueError, match="reference"):
            dmpo_loss(pc, pr, None, None, 1.0)


# ----------------------------------------------------------------------------- IPO
class TestIPO:
    def test_hand_computed(self):
        """beta = 0.5: target 1/(2 beta) = 1. h(p) = 0, h(d) = -2: margin 2, L = (2 - 1)^2 = 1.
        ipo_k with h(d) = [-2, 0]: margins [2, 0], L = ((2-1)^2 + (0-1)^2) / 2 = 1;
        with h(d) = [-2, -4]: margins [2, 4], L = (1 + 9) / 2 = 5."""
        z1, z2 = torch.zeros(1), torch.zeros(1, 2)
        assert_close(
            ipo_loss(z1, torch.tensor([-2.0]), z1, torch.zeros(1), 0.5).losses, torch.tensor([1.0])
        )
        assert_close(
            ipo_k_loss(z1, torch.tensor([[-2.0, 0.0]]), z1, z2, 0.5).losses, torch.tensor([1.0])
        )
        out = ipo_k_loss(z1, torch.tensor([[-2.0, -4.0]]), z1, z2, 0.5)
        assert_close(out.losses, torch.tensor([5.0]))
        assert_close(out.rejected_rewards, torch.tensor([[-1.0, -2.0]]))  # beta * h

    def test_reference_enters_the_margin(self):
        """log pi = [-1 (p), -3 (d)], log pi_ref = [-2, -2]: h(p) = 1, h(d) = -1, margin 2;
        beta = 1: target 0.5, L = 1.5^2 = 2.25."""
        out = ipo_loss(
            torch.tensor([-1.0]),
            torch.tensor([[-3.0]]),
            torch.tensor([-2.0]),
            torch.tensor([[-2.0]]),
            1.0,
        )
        assert_close(out.losses, torch.tensor([2.25]))

    def test_token_mean(self):
        """Token counts |p| = 2, |d| = 4; h(p) = -2, h(d) = -8: token-mean margin -1 - (-2) = 1.
        beta = 0.5 (target 1): L = 0; beta = 1 (target 0.5): L = 0.25. Rewards beta * h / |y|."""
        args = (torch.tensor([-2.0]), torch.tensor([[-8.0]]), torch.zeros(1), torch.zeros(1, 1))
        n = dict(chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([[4]]))
        assert_close(ipo_loss(*args, 0.5, **n).losses, torch.tensor([0.0]))
        out = ipo_k_loss(*args, 1.0, **n)
        assert_close(out.losses, torch.tensor([0.25]))
        assert_close(out.chosen_rewards, torch.tensor([-1.0]))
        assert_close(out.rejected_rewards, torch.tensor([[-2.0]]))

    def test_k1_equals_pairwise_and_counts_one_are_sums(self):
        """ipo_k with K = 1 is ipo; counts of 1 leave the sequence-level margin unchanged."""
        pc, pr, rc, rr = _random(6, 1)
        a = ipo_loss(pc, pr[:, 0], rc, rr[:, 0], 0.3).losses
        assert_close(ipo_k_loss(pc, pr, rc, rr, 0.3).losses, a)
        ones = dict(chosen_lengths=torch.ones(6), rejected_lengths=torch.ones(6, 1))
        assert_close(ipo_k_loss(pc, pr, rc, rr, 0.3, **ones).losses, a)

    def test_errors(self):
        pc, pr, rc, rr = _random(2, 3)
        with pytest.raises(ValueError, match="use objective 'ipo_k'"):
            ipo_loss(pc, pr, rc, rr, 1.0)
        with pytest.raises(ValueError, match="both"):
            ipo_k_loss(pc, pr, rc, rr, 1.0, chosen_lengths=torch.ones(2))
        with pytest.raises(ValueError, match=r"rejected_lengths must have shape \(2, 3\)"):
            ipo_k_loss(
                pc, pr, rc, rr, 1.0, chosen_lengths=torch.ones(2), rejected_lengths=torch.ones(2)
            )

    def test_extreme_margins(self):
        """beta = 1, target 0.5: margins -1000 and +1000 give (1000.5)^2 and (999.5)^2."""
        out = _assert_finite_at_extremes(ipo_k_loss)
        assert_close(out.losses, torch.tensor([1000.5**2, 999.5**2]))

    def test_gradcheck(self):
        pc, pr, rc, rr = (t.requires_grad_() for t in _random(3, 4))
        n_c, n_r = _lengths(3, 4)
        assert torch.autograd.gradcheck(lambda *a: ipo_k_loss(*a, 0.8).losses, (pc, pr, rc, rr))
        assert torch.autograd.gradcheck(
            lambda *a: ipo_k_loss(*a, 0.8, chosen_lengths=n_c, rejected_lengths=n_r).losses,
            (pc, pr, rc, rr),
        )


# ----------------------------------------------------------------------------- SimPO
class TestSimPO:
    def test_hand_computed(self):
        """beta = 2, gamma = 0.5; log pi(p) = -3 over 3 tokens: r(p) = 2 * -1 = -2;
        log pi(d) = -8 over 2 tokens: r(d) = 2 * -4 = -8.
        L = -log σ(-2 - (-8) - 0.5) = softplus(-5.5)."""
        out = simpo_loss(
            torch.tensor([-3.0]),
            torch.tensor([-8.0]),
            None,
            None,
            2.0,
            chosen_lengths=torch.tensor([3]),
            rejected_lengths=torch.tensor([2]),
            gamma=0.5,
        )
        assert_close(out.losses, torch.tensor([_softplus(-5.5)]))
        assert_close(out.chosen_rewards, torch.tensor([-2.0]))
        assert_close(out.rejected_rewards, torch.tensor([[-8.0]]))

    def test_softmax_hand_computed(self):
        """beta = 1, counts 1, gamma = 1: r(p) = 0, r(d) = [0, 0]:
        L = softplus(gamma + log(e^0 + e^0)) = softplus(1 + log 2) = log(1 + 2e)."""
        out = softmax_simpo_loss(
            torch.zeros(1),
            torch.zeros(1, 2),
            None,
            None,
            1.0,
            chosen_lengths=torch.ones(1),
            rejected_lengths=torch.ones(1, 2),
            gamma=1.0,
        )
        assert_close(out.losses, torch.tensor([math.log1p(2 * math.e)]))

    def test_softmax_k1_equals_simpo(self):
        """K = 1: softplus(gamma + r(d) - r(p)) = -log σ(r(p) - r(d) - gamma)."""
        pc, pr, _, _ = _random(8, 1)
        n_c, n_r = _lengths(8, 1)
        kw = dict(chosen_lengths=n_c, rejected_lengths=n_r, gamma=0.7)
        assert_close(
            softmax_simpo_loss(pc, pr, None, None, 2.5, **kw).losses,
            simpo_loss(
                pc,
                pr[:, 0],
                None,
                None,
                2.5,
                chosen_lengths=n_c,
                rejected_lengths=n_r[:, 0],
                gamma=0.7,
            ).losses,
        )

    def test_softmax_is_reference_free_sdpo(self):
        """gamma = 0 and counts of 1: r(y) = beta log pi(y), which is S-DPO's reward with a
        reference of log-prob 0; so the losses equal sdpo_loss(pc, pr, 0, 0, beta)."""
        from sdpo_lightning.training.objectives import sdpo_loss

        pc, pr, _, _ = _random(5, 4)
        out = softmax_simpo_loss(
            pc,
            pr,
            None,
            None,
            0.3,
            chosen_lengths=torch.ones(5),
            rejected_lengths=torch.ones(5, 4),
            gamma=0.0,
        )
        assert_close(
            out.losses,
            sdpo_loss(
                pc, pr, torch.zeros(5, dtype=pc.dtype), torch.zeros(5, 4, dtype=pc.dtype), 0.3
            ).losses,
        )

    def test_reference_ignored(self):
        pc, pr, rc, rr = _random(3, 2)
        n_c, n_r = _lengths(3, 2)
        kw = dict(chosen_lengths=n_c, rejected_lengths=n_r)
        assert_close(
            softmax_simpo_loss(pc, pr, rc, rr, 1.0, **kw).losses,
            softmax_simpo_loss(pc, pr, None, None, 1.0, **kw).losses,
        )

    def test_counts_required_and_checked(self):
        pc, pr, _, _ = _random(2, 3)
        with pytest.raises(TypeError):
            softmax_simpo_loss(pc, pr, None, None, 1.0)  # counts are keyword-only, no default
        with pytest.raises(ValueError, match="token counts are required"):
            softmax_simpo_loss(pc, pr, None, None, 1.0, chosen_lengths=None, rejected_lengths=None)
        with pytest.raises(ValueError, match=r"chosen_lengths must have shape \(2,\)"):
            softmax_simpo_loss(
                pc,
                pr,
                None,
                None,
                1.0,
                chosen_lengths=torch.ones(3),
                rejected_lengths=torch.ones(2, 3),
            )
        with pytest.raises(ValueError, match=">= 0"):
            softmax_simpo_loss(
                pc,
                pr,
                None,
                None,
                1.0,
                chosen_lengths=-torch.ones(2),
                rejected_lengths=torch.ones(2, 3),
            )
        with pytest.raises(ValueError, match="use objective 'softmax_simpo'"):
            simpo_loss(
                pc,
                pr,
                None,
                None,
                1.0,
                chosen_lengths=torch.ones(2),
                rejected_lengths=torch.ones(2, 3),
            )
        with pytest.raises(ValueError, match="gamma"):
            simpo_loss(
                pc,
                pr[:, 0],
                None,
                None,
                1.0,
                chosen_lengths=torch.ones(2),
                rejected_lengths=torch.ones(2),
                gamma=float("nan"),
            )

    def test_empty_completion_is_guarded(self):
        """A count of 0 is clamped to 1 (its summed log-prob is 0): r = 0, no division by 0."""
        out = simpo_loss(
            torch.tensor([0.0]),
            torch.tensor([-2.0]),
            None,
            None,
            1.0,
            chosen_lengths=torch.tensor([0]),
            rejected_lengths=torch.tensor([1]),
            gamma=0.0,
        )
        assert_close(out.losses, torch.tensor([_softplus(-2.0)]))

    def test_extreme_margins(self):
        """Counts 1, gamma 0.5: margins -1000 -> softplus(0.5 + 1000 + log 2); +1000 -> ~0."""
        kw = dict(chosen_lengths=torch.ones(2), rejected_lengths=torch.ones(2, 2), gamma=0.5)
        out = _assert_finite_at_extremes(softmax_simpo_loss, **kw)
        assert_close(out.losses, torch.tensor([1000.5 + math.log(2), 0.0]))

    def test_gradient_formula(self):
        """dL/dlog pi(p) = -beta s / |p|, dL/dlog pi(d_k) = beta s w_k / |d_k| with
        s = σ(gamma + logsumexp g), w = softmax(g), g_k = r(d_k) - r(p)."""
        pc = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
        pr = torch.tensor([[-3.0, -6.0]], dtype=torch.float64, requires_grad=True)
        n_c, n_r = torch.tensor([2]), torch.tensor([[1, 3]])
        beta, gamma = 1.5, 0.2
        softmax_simpo_loss(
            pc, pr, None, None, beta, chosen_lengths=n_c, rejected_lengths=n_r, gamma=gamma
        ).losses.sum().backward()
        g = beta * torch.tensor([-3.0 / 1, -6.0 / 3], dtype=torch.float64) - beta * (-2.0 / 2)
        s = torch.sigmoid(gamma + torch.logsumexp(g, 0))
        assert_close(pc.grad, (-beta * s / 2).reshape(1))
        counts = torch.tensor([1.0, 3.0], dtype=torch.float64)
        assert_close(pr.grad, (beta * s * torch.softmax(g, 0) / counts).reshape(1, 2))

    def test_gradcheck(self):
        pc, pr, _, _ = (t.requires_grad_() for t in _random(3, 4))
        n_c, n_r = _lengths(3, 4)
        assert torch.autograd.gradcheck(
            lambda a, b: (
                softmax_simpo_loss(
                    a, b, None, None, 2.0, chosen_lengths=n_c, rejected_lengths=n_r, gamma=0.5
                ).losses
            ),
            (pc, pr),
        )


# ----------------------------------------------------------------------------- DynamicPO
class TestDynamicPO:
    def test_top_cluster(self):
        """[1, 2, 10, 11, 20] into 3 groups: {1,2},{10,11},{20} has SSE 0.5 + 0.5 + 0 = 1,
        the least of the 6 contiguous splits -> top group {20}.
        [0, 0.1, 0.2, 5, 5.1]: {0,.1},{.2},{5,5.1} (SSE 0.01) beats {0,.1,.2},{5},{5.1}
        (0.02) -> top group {5, 5.1}. Rows are independent; order in the row is kept.
        K <= 3: every value its own group, the top one is the maximum."""
        v = torch.tensor([[11.0, 1.0, 20.0, 2.0, 10.0], [5.1, 0.0, 0.2, 5.0, 0.1]])
        assert top_cluster(v).tolist() == [
            [False, False, True, False, False],
            [True, False, False, True, False],
        ]
        assert top_cluster(torch.tensor([[3.0, 1.0], [-1.0, 4.0]])).tolist() == [
            [True, False],
            [False, True],
        ]
        assert top_cluster(torch.tensor([[-7.0]])).tolist() == [[True]]
        assert top_cluster(v, clusters=1).all()

    def test_boundary_selection(self):
        """Row 0: l(p) = -2, l(d) = [-1, -3, -2]: boundary {d_0, d_2} (>= l(p), ties count),
        discriminative {d_1}. Row 1: l(p) = -5, all negatives above: D = B = all.
        Row 2: l(p) = 0, none reaches it: the top k-means group of [-1, -2, -10, -11, -20] is
        {-1, -2} (SSE 1 against >= 16.5 for any other split); D = the rest."""
        b, d = boundary_negatives(
            torch.tensor([-2.0, -5.0]), torch.tensor([[-1.0, -3.0, -2.0], [-1.0, -2.0, -4.0]])
        )
        assert b.tolist() == [[True, False, True], [True, True, True]]
        assert d.tolist() == [[False, True, False], [True, True, True]]
        b, d = boundary_negatives(
            torch.tensor([0.0]), torch.tensor([[-1.0, -2.0, -10.0, -11.0, -20.0]])
        )
        assert b.tolist() == [[True, True, False, False, False]]
        assert d.tolist() == [[False, False, True, True, True]]

    def test_hand_computed(self):
        """Reference 0 (h = l), beta = 1, m = 2, s = 0.5. l(p) = -2, l(d) = [-1, -3, -2]:
        B = {0, 2}, D = {1}, mean_D l = -3.
        j = 0: a = -2 - (-1) = -1, c = -1 - (-3) = 2: beta_0 = 1 + 0.5 tanh((-1 - 2 - 2)/3).
        j = 2: a = 0, c = -2 - (-3) = 1:          beta_2 = 1 + 0.5 tanh((0 - 1 - 2)/1).
        L = -log σ((beta_0 (-2 - -1) + beta_2 (-2 - -2)) / 2) = softplus(beta_0 / 2)."""
        pc, pr = torch.tensor([-2.0]), torch.tensor([[-1.0, -3.0, -2.0]])
        b0 = 1 + 0.5 * math.tanh(-5 / 3)
        b2 = 1 + 0.5 * math.tanh(-3.0)
        b, d = boundary_negatives(pc, pr)
        assert_close(dynamic_betas(pc, pr, 1.0, b, d), torch.tensor([[b0, 0.0, b2]]))
        out = dynamicpo_loss(pc, pr, torch.zeros(1), torch.zeros(1, 3), 1.0)
        assert_close(out.losses, torch.tensor([_softplus(b0 / 2)]))
        assert_close(out.rejected_rewards, pr)  # rewards with the base beta = 1

    def test_fallback_hand_computed(self):
        """l(p) = 0, l(d) = [-1, -2, -10, -11, -20], reference l_ref(d) = [0, -1, 0, 0, 0]:
        B = {0, 1}, D = {2, 3, 4}, mean_D l = -41/3. beta = 2, m = 1, s = 0.25.
        j = 0: a = 1, c = -1 + 41/3 = 38/3; j = 1: a = 2, c = -2 + 41/3 = 35/3.
        beta_j = 2 (1 + 0.25 tanh((a - c - 1)/(|a| + |c|))).
        h(p) = 0, h(d_0) = -1, h(d_1) = -1: L = -log σ((beta_0 + beta_1) / 2)."""
        pc, pr = torch.tensor([0.0]), torch.tensor([[-1.0, -2.0, -10.0, -11.0, -20.0]])
        rr = torch.tensor([[0.0, -1.0, 0.0, 0.0, 0.0]])

        def bj(a, c):
            return 2 * (1 + 0.25 * math.tanh((a - c - 1) / (abs(a) + abs(c))))

        b0, b1 = bj(1, 38 / 3), bj(2, 35 / 3)
        out = dynamicpo_loss(pc, pr, torch.zeros(1), rr, 2.0, margin=1.0, spread=0.25)
        assert_close(out.losses, torch.tensor([_softplus(-(b0 + b1) / 2)]))

    def test_spread_zero_is_dmpo_over_the_boundary(self):
        """s = 0: every beta_j = beta, so L is DMPO over B; where B is every negative (the
        policy ranks the chosen item last) it is dmpo_loss itself."""
        pc, pr, rc, rr = _random(6, 5, seed=3)
        out = dynamicpo_loss(pc, pr, rc, rr, 0.9, spread=0.0)
        b, _ = boundary_negatives(pc, pr)
        for i in range(6):
            keep = b[i]
            ref = dmpo_loss(
                pc[i : i + 1], pr[i : i + 1, keep], rc[i : i + 1], rr[i : i + 1, keep], 0.9
            )
            assert_close(out.losses[i : i + 1], ref.losses)
        low = pr.min(dim=1).values - 1.0  # below every negative: all are boundary negatives
        assert_close(
            dynamicpo_loss(low, pr, rc, rr, 0.9, spread=0.0).losses,
            dmpo_loss(low, pr, rc, rr, 0.9).losses,
        )

    def test_k1_tie_is_finite(self):
        """K = 1 with l(d) = l(p): a = c = 0, the adjustment is tanh(-m / 0+) = -1, so
        beta_1 = beta (1 - s) = 0.5 and h(p) = h(d) = 0 gives L = log 2 (no 0/0 NaN)."""
        z1, z11 = torch.zeros(1), torch.zeros(1, 1)
        out = dynamicpo_loss(z1, z11, z1, z11, 1.0)
        assert_close(out.losses, torch.tensor([math.log(2.0)]))

    def test_extreme_margins(self):
        """Negatives at +1000 are all boundary: L = softplus(beta_j * 1000) ~ 1000 beta_j, with
        beta_j = 1 + 0.5 tanh((-1000 - 0 - 2)/1000) = 1 + 0.5 tanh(-1.002); negatives at
        -1000: k-means fallback, L ~ 0."""
        out = _assert_finite_at_extremes(dynamicpo_loss)
        bj = 1 + 0.5 * math.tanh(-1.002)
        assert_close(out.losses, torch.tensor([1000.0 * bj, 0.0]))

    def test_gradcheck_through_the_log_ratios(self):
        """The selection and every beta_j are constants of the step (read from the policy's
        log-probs, detached): gradcheck against the reference log-probs, which move only the
        log-ratios, and check the policy gradient is their negative."""
        pc, pr, rc, rr = _random(4, 5, seed=1)
        rc.requires_grad_()
        rr.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b: dynamicpo_loss(pc, pr, a, b, 0.7).losses, (rc, rr)
        )
        pc2, pr2 = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        g_pol = torch.autograd.grad(dynamicpo_loss(pc2, pr2, rc, rr, 0.7).losses.sum(), (pc2, pr2))
        g_ref = torch.autograd.grad(dynamicpo_loss(pc, pr, rc, rr, 0.7).losses.sum(), (rc, rr))
        assert_close(g_pol[0], -g_ref[0])
        assert_close(g_pol[1], -g_ref[1])

    def test_parameter_checks(self):
        pc, pr, rc, rr = _random(2, 3)
        with pytest.raises(ValueError, match="spread"):
            dynamicpo_loss(pc, pr, rc, rr, 1.0, spread=1.0)
        with pytest.raises(ValueError, match="margin"):
            dynamicpo_loss(pc, pr, rc, rr, 1.0, margin=float("inf"))
        with pytest.raises(ValueError, match="clusters"):
            top_cluster(pr, clusters=0)


@pytest.mark.parametrize(
    "fn, kw",
    [
        (dmpo_loss, {}),
        (ipo_k_loss, {}),
        (dynamicpo_loss, {}),
        (
            softmax_simpo_loss,
            {"chosen_lengths": torch.ones(3), "rejected_lengths": torch.ones(3, 2)},
        ),
    ],
)
def test_rewards_detached_losses_attached(fn, kw):
    pc, pr, rc, rr = _random(3, 2, dtype=torch.float32)
    pc.requires_grad_()
    pr.requires_grad_()
    out = fn(pc, pr, rc, rr, 1.0, **kw)
    assert out.losses.shape == (3,) and out.losses.requires_grad
    assert out.chosen_rewards.shape == (3,) and not out.chosen_rewards.requires_grad
    assert out.rejected_rewards.shape == (3, 2) and not out.rejected_rewards.requires_grad
    assert not F.softplus(out.chosen_rewards).requires_grad
