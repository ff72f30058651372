"""Unit tests for sdpo_lightning.training.objectives.

Notation: r(y) = beta * (log pi(y) - log pi_ref(y)); chosen p, rejected d_1..d_K;
g_k = r(d_k) - r(p).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from sdpo_lightning.training.objectives import (
    OBJECTIVE_SPECS,
    OBJECTIVES,
    ObjectiveOutput,
    dpo_k_loss,
    dpo_loss,
    preference_loss,
    reward_metrics,
    sdpo_loss,
    sft_loss,
)


def _random_inputs(batch: int, k: int, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pc = -torch.rand(batch, generator=gen, dtype=dtype) * 20
    pr = -torch.rand(batch, k, generator=gen, dtype=dtype) * 20
    rc = -torch.rand(batch, generator=gen, dtype=dtype) * 20
    rr = -torch.rand(batch, k, generator=gen, dtype=dtype) * 20
    return pc, pr, rc, rr


def _paper_sdpo_float64(pc, pr, rc, rr, beta):
    """The paper's formula, evaluated naively in float64: -log σ(-log Σ_k exp(r(d_k) - r(p)))."""
    pc, pr, rc, rr = (t.detach().double() for t in (pc, pr, rc, rr))
    r_p = beta * (pc - rc)
    r_d = beta * (pr - rr)
    return -F.logsigmoid(-torch.log(torch.sum(torch.exp(r_d - r_p[:, None]), dim=1)))


def _official_sdpo(pc, pr, rc, rr, beta):
    """The official implementation's form: log(sum(exp(.))) evaluated directly."""
    r_p = beta * (pc - rc)
    r_d = beta * (pr - rr)
    temp = torch.sum(torch.exp(r_d - r_p[:, None]), dim=1)
    return -F.logsigmoid(-torch.log(temp))


class TestSDPO:
    def test_k1_equals_dpo(self):
        """With K = 1, logsumexp over one gap g is g itself, so
        -log σ(-g) = -log σ(r(p) - r(d)) is exactly the DPO loss."""
        pc, pr, rc, rr = _random_inputs(8, 1)
        beta = 0.7
        s = sdpo_loss(pc, pr, rc, rr, beta)
        d = dpo_loss(pc, pr, rc, rr, beta)
        d_flat = dpo_loss(pc, pr[:, 0], rc, rr[:, 0], beta)
        assert_close(s.losses, d.losses)
        assert_close(s.losses, d_flat.losses)
        assert_close(s.chosen_rewards, d.chosen_rewards)
        assert_close(s.rejected_rewards, d.rejected_rewards)
        assert d_flat.rejected_rewards.shape == (8, 1)

    @pytest.mark.parametrize("k", [1, 3, 20])
    @pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
    def test_matches_paper_formula_float64(self, k, beta):
        """On moderate random inputs the naive float64 formula
        -log σ(-log Σ_k exp(r(d_k) - r(p))) does not overflow and is the reference value."""
        pc, pr, rc, rr = _random_inputs(16, k, seed=k)
        out = sdpo_loss(pc, pr, rc, rr, beta)
        expected = _paper_sdpo_float64(pc, pr, rc, rr, beta)
        assert out.losses.dtype == torch.float32
        assert_close(out.losses.double(), expected, rtol=1e-5, atol=1e-6)

    def test_hand_computed(self):
        """beta = 1, policy = reference except for a few entries, so rewards are easy.

        Example 0: r(p) = 0 - 0 = 0, r(d) = [0, 0] -> g = [0, 0],
            logsumexp = log 2, L = -log σ(-log 2) = log(1 + 2) = log 3.
        Example 1: r(p) = 1 - 0 = 1, r(d) = [-1, 1] -> g = [-2, 0],
            logsumexp = log(1 + e^-2), L = log(1 + 1 + e^-2) = log(2 + e^-2).
        (Identity: -log σ(-log S) = log(1 + S) with S = Σ_k exp(g_k).)
        """
        pc = torch.tensor([0.0, 1.0])
        rc = torch.tensor([0.0, 0.0])
        pr = torch.tensor([[0.0, 0.0], [-1.0, 1.0]])
        rr = torch.zeros(2, 2)
        out = sdpo_loss(pc, pr, rc, rr, beta=1.0)
        expected = torch.tensor([math.log(3.0), math.log(2.0 + math.exp(-2.0))])
        assert_close(out.losses, expected)
        assert_close(out.chosen_rewards, torch.tensor([0.0, 1.0]))
        assert_close(out.rejected_rewards, torch.tensor([[0.0, 0.0], [-1.0, 1.0]]))

    def test_beta_scales_rewards(self):
        """r(y) = beta * (logpi - logref): with beta = 0.5, logpi = -2, logref = -4 -> r = 1."""
        out = sdpo_loss(
            torch.tensor([-2.0]),
            torch.tensor([[-4.0]]),
            torch.tensor([-4.0]),
            torch.tensor([[-2.0]]),
            beta=0.5,
        )
        assert_close(out.chosen_rewards, torch.tensor([1.0]))
        assert_close(out.rejected_rewards, torch.tensor([[-1.0]]))
        # g = -2 -> L = log(1 + e^-2)
        assert_close(out.losses, torch.tensor([math.log1p(math.exp(-2.0))]))

    @pytest.mark.parametrize("margin", [1000.0, -1000.0])
    def test_extreme_margins_finite(self, margin):
        """At g_k = ±1000 (beta = 1) the loss and its gradients stay finite.

        g = +1000: L = softplus(logsumexp g) ≈ 1000 + log K, dL/dlogπ(p) = -1.
        g = -1000: L ≈ 0, all gradients ≈ 0.
        The official log(Σ exp) form overflows to inf (g = +1000) or gives a NaN
        gradient through log(0) (g = -1000), which shows the check is meaningful.
        """
        k = 3
        pc = torch.zeros(2, requires_grad=True)
        pr = torch.full((2, k), margin, requires_grad=True)
        rc = torch.zeros(2)
        rr = torch.zeros(2, k)

        out = sdpo_loss(pc, pr, rc, rr, beta=1.0)
        out.losses.sum().backward()
        assert torch.isfinite(out.losses).all()
        assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
        if margin > 0:
            # float32 spacing near 1001 is ~6e-5, so softmax(g) = exp(g - LSE) carries a
            # relative error of that order: compare the gradients at rtol 1e-4.
            assert_close(out.losses, torch.full((2,), margin + math.log(k)))
            assert_close(pc.grad, torch.full((2,), -1.0), rtol=1e-4, atol=0.0)
            assert_close(pr.grad, torch.full((2, k), 1.0 / k), rtol=1e-4, atol=0.0)
        else:
            assert_close(out.losses, torch.zeros(2))
            assert_close(pc.grad, torch.zeros(2))
            assert_close(pr.grad, torch.zeros(2, k))

        # The official formulation breaks at the same inputs.
        pc2 = pc.detach().clone().requires_grad_(True)
        pr2 = pr.detach().clone().requires_grad_(True)
        official = _official_sdpo(pc2, pr2, rc, rr, beta=1.0)
        official.sum().backward()
        broken = (
            not torch.isfinite(official).all()
            or not torch.isfinite(pc2.grad).all()
            or not torch.isfinite(pr2.grad).all()
        )
        assert broken, "official log(sum(exp)) form unexpectedly stayed finite"

    def test_extreme_margins_low_precision(self):
        """bf16 inputs are upcast to float32: finite loss, float32 output."""
        pc = torch.zeros(2, dtype=torch.bfloat16)
        pr = torch.full((2, 4), 1000.0, dtype=torch.bfloat16)
        out = sdpo_loss(pc, pr, torch.zeros_like(pc), torch.zeros_like(pr), beta=1.0)
        assert out.losses.dtype == torch.float32
        assert torch.isfinite(out.losses).all()

    def test_float64_preserved(self):
        pc, pr, rc, rr = _random_inputs(4, 3, dtype=torch.float64)
        out = sdpo_loss(pc, pr, rc, rr, beta=1.0)
        assert out.losses.dtype == torch.float64
        assert out.chosen_rewards.dtype == torch.float64

    @pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
    def test_gradient_matches_paper_analysis(self, beta):
        """With g_k = r(d_k) - r(p), s = σ(logsumexp_k g_k), w = softmax(g):

            dL/dlogπ(p)   = -beta * s
            dL/dlogπ(d_k) =  beta * s * w_k

        (L = softplus(LSE(g)); dL/dLSE = σ(LSE); dLSE/dg_k = w_k; dg_k/dlogπ(p) = -beta,
        dg_k/dlogπ(d_k) = beta.) Checked against autograd in float64.
        """
        pc, pr, rc, rr = _random_inputs(6, 5, dtype=torch.float64, seed=3)
        pc.requires_grad_(True)
        pr.requires_grad_(True)
        out = sdpo_loss(pc, pr, rc, rr, beta)
        out.losses.sum().backward()

        with torch.no_grad():
            g = beta * (pr - rr) - beta * (pc - rc)[:, None]
            s = torch.sigmoid(torch.logsumexp(g, dim=1))
            w = torch.softmax(g, dim=1)
        assert_close(pc.grad, -beta * s)
        assert_close(pr.grad, beta * s[:, None] * w)
        # The reference model receives no gradient and the rewards carry none.
        assert not out.chosen_rewards.requires_grad
        assert not out.rejected_rewards.requires_grad

    def test_shape_errors(self):
        pc, pr, rc, rr = _random_inputs(4, 3)
        with pytest.raises(ValueError, match=r"\(B, K\)"):
            sdpo_loss(pc, pr[:, 0], rc, rr[:, 0], 1.0)
        with pytest.raises(ValueError, match="ref_rejected_logps"):
            sdpo_loss(pc, pr, rc, rr[:, :2], 1.0)
        with pytest.raises(ValueError, match="batch sizes"):
            sdpo_loss(pc[:3], pr, rc[:3], rr, 1.0)
        with pytest.raises(ValueError, match="beta"):
            sdpo_loss(pc, pr, rc, rr, 0.0)


class TestDPO:
    def test_hand_computed(self):
        """beta = 0.5: r(p) = 0.5 * (-1 - -3) = 1, r(d) = 0.5 * (-4 - -2) = -1,
        L = -log σ(2) = log(1 + e^-2)."""
        out = dpo_loss(
            torch.tensor([-1.0]),
            torch.tensor([-4.0]),
            torch.tensor([-3.0]),
            torch.tensor([-2.0]),
            beta=0.5,
        )
        assert_close(out.losses, torch.tensor([math.log1p(math.exp(-2.0))]))

    def test_rejects_multiple_negatives(self):
        pc, pr, rc, rr = _random_inputs(4, 3)
        with pytest.raises(ValueError, match="exactly one rejected"):
            dpo_loss(pc, pr, rc, rr, 1.0)
        with pytest.raises(ValueError, match="exactly one rejected"):
            preference_loss("dpo", pc, pr, rc, rr, 1.0)

    def test_dpo_k_is_mean_of_pairwise(self):
        """DPO-Knegative: L = (1/K) Σ_k -log σ(r(p) - r(d_k))."""
        pc, pr, rc, rr = _random_inputs(5, 4, seed=7)
        beta = 0.3
        out = dpo_k_loss(pc, pr, rc, rr, beta)
        pairwise = torch.stack(
            [dpo_loss(pc, pr[:, k], rc, rr[:, k], beta).losses for k in range(4)], dim=1
        )
        assert_close(out.losses, pairwise.mean(dim=1))
        # With K = 1 the three log-sigmoid objectives of the paper (and DMPO) coincide.
        names = ("sdpo", "dpo", "dpo_k", "dmpo")
        one = [OBJECTIVES[n](pc, pr[:, :1], rc, rr[:, :1], beta).losses for n in names]
        for other in one[1:]:
            assert_close(one[0], other)

    def test_dpo_k_extreme_margins_finite(self):
        pc = torch.zeros(2, requires_grad=True)
        pr = torch.tensor([[1000.0, -1000.0], [-1000.0, -1000.0]], requires_grad=True)
        out = dpo_k_loss(pc, pr, torch.zeros(2), torch.zeros(2, 2), beta=1.0)
        out.losses.sum().backward()
        assert torch.isfinite(out.losses).all() and torch.isfinite(pr.grad).all()
        assert_close(out.losses, torch.tensor([500.0, 0.0]))


class TestRewardMetrics:
    def test_rewards_detached(self):
        pc, pr, rc, rr = _random_inputs(3, 2)
        pc.requires_grad_(True)
        pr.requires_grad_(True)
        for name, spec in OBJECTIVE_SPECS.items():
            k = 1 if spec.pairwise else 2
            options = (
                {"chosen_lengths": torch.ones(3), "rejected_lengths": torch.ones(3, k)}
                if "gamma" in spec.options
                else {}
            )
            out = preference_loss(name, pc, pr[:, :k], rc, rr[:, :k], 1.0, **options)
            assert isinstance(out, ObjectiveOutput)
            assert out.losses.requires_grad
            assert not out.chosen_rewards.requires_grad
            assert not out.rejected_rewards.requires_grad
            metrics = reward_metrics(out, pc, pr[:, :k])
            assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())

    def test_accuracy_requires_beating_every_negative(self):
        """beta = 1, reference = 0 so rewards equal policy log-probs.

        Example 0: r(p) = 0, r(d) = [-3, 1]: beats the mean (-1) but not d_2 -> not accurate.
        Example 1: r(p) = 0, r(d) = [-1, -2]: beats every negative -> accurate.
        accuracies = 1/2.
        chosen mean = 0; rejected mean = (-3 + 1 - 1 - 2) / 4 = -1.25;
        margins = mean(0 - (-1), 0 - (-1.5)) = 1.25.
        """
        pc = torch.tensor([0.0, 0.0])
        pr = torch.tensor([[-3.0, 1.0], [-1.0, -2.0]])
        out = sdpo_loss(pc, pr, torch.zeros(2), torch.zeros(2, 2), beta=1.0)
        m = reward_metrics(out, pc, pr)
        assert set(m) == {
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
        }
        assert_close(m["rewards/accuracies"], torch.tensor(0.5))
        assert_close(m["rewards/chosen"], torch.tensor(0.0))
        assert_close(m["rewards/rejected"], torch.tensor(-1.25))
        assert_close(m["rewards/margins"], torch.tensor(1.25))
        assert_close(m["logps/chosen"], torch.tensor(0.0))
        assert_close(m["logps/rejected"], torch.tensor(-1.25))

    def test_ties_are_not_accurate(self):
        pc = torch.tensor([0.0])
        pr = torch.tensor([[0.0, -1.0]])
        out = sdpo_loss(pc, pr, torch.zeros(1), torch.zeros(1, 2), beta=1.0)
        assert_close(reward_metrics(out, pc, pr)["rewards/accuracies"], torch.tensor(0.0))


class TestSFT:
    def test_hand_computed(self):
        """loss_i = -logps_sum_i / n_tokens_i: -(-6)/3 = 2, -(-1)/4 = 0.25;
        an empty completion (n = 0, sum = 0) is guarded to 0 / 1 = 0."""
        logps = torch.tensor([-6.0, -1.0, 0.0])
        n = torch.tensor([3, 4, 0])
        loss = sft_loss(logps, n)
        assert_close(loss, torch.tensor([2.0, 0.25, 0.0]))

    def test_gradient_and_dtype(self):
        logps = torch.tensor([-6.0, -2.0], dtype=torch.bfloat16, requires_grad=True)
        loss = sft_loss(logps, torch.tensor([3, 2]))
        assert loss.dtype == torch.float32
        loss.sum().backward()
        assert_close(logps.grad.float(), torch.tensor([-1 / 3, -1 / 2]), rtol=1e-2, atol=1e-2)

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="same shape"):
            sft_loss(torch.zeros(3), torch.ones(2))


class TestRegistry:
    def test_registry_names(self):
        assert set(OBJECTIVES) == {
            "sdpo",
            "dpo",
            "dpo_k",
            "dmpo",
            "ipo",
            "ipo_k",
            "simpo",
            "softmax_simpo",
            "dynamicpo",
        }
        assert OBJECTIVES["sdpo"] is sdpo_loss
        assert all(OBJECTIVES[n] is spec.fn for n, spec in OBJECTIVE_SPECS.items())

    def test_registry_matches_the_settings(self):
        """The objective names, the reference-free and the pairwise ones of ObjectiveArgs are
        those of the registry (module_args keeps its own lists: it imports no torch)."""
        from sdpo_lightning.training.module_args import OBJECTIVE_NAMES, PAIRWISE, REFERENCE_FREE

        assert set(OBJECTIVE_NAMES) == set(OBJECTIVES) | {"sft"}
        assert set(REFERENCE_FREE) == {n for n, s in OBJECTIVE_SPECS.items() if not s.reference} | {
            "sft"
        }
        assert set(PAIRWISE) == {n for n, s in OBJECTIVE_SPECS.items() if s.pairwise}

    def test_dispatch_options(self):
        """Options reach the objective; one it does not take is refused by name."""
        pc, pr, rc, rr = _random_inputs(4, 1)
        n = {"chosen_lengths": torch.full((4,), 2), "rejected_lengths": torch.full((4, 1), 2)}
        assert_close(
            preference_loss("ipo", pc, pr, rc, rr, 1.0, **n).losses,
            OBJECTIVES["ipo"](pc, pr, rc, rr, 1.0, **n).losses,
        )
        with pytest.raises(ValueError, match="objective 'sdpo' takes no option 'gamma'"):
            preference_loss("sdpo", pc, pr, rc, rr, 1.0, gamma=0.5)

    def test_dispatch(self):
        pc, pr, rc, rr = _random_inputs(4, 3)
        assert_close(
            preference_loss("sdpo", pc, pr, rc, rr, 1.0).losses,
            sdpo_loss(pc, pr, rc, rr, 1.0).losses,
        )

    @pytest.mark.parametrize("name", ["kto", "SDPO", "", "sft"])
    def test_unknown_objective(self, name):
        pc, pr, rc, rr = _random_inputs(2, 2)
        with pytest.raises(ValueError, match="unknown preference objective"):
            preference_loss(name, pc, pr, rc, rr, 1.0)
