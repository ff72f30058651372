"""The objective settings of the successor objectives (``ObjectiveArgs``) and how they become
an objective's call (``training/objective_call.py``); the reference-free objectives build no
frozen reference copy."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from sdpo_lightning.training.module_args import ObjectiveArgs
from sdpo_lightning.training.objective_call import (
    needs_reference,
    objective_loss,
    objective_options,
    uses_token_mean,
)
from sdpo_lightning.training.objectives import OBJECTIVES


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"name": "ipo", "num_negatives": 3},
            "objective 'ipo' is pairwise: num_negatives must be 1, got 3 (use ipo_k)",
        ),
        (
            {"name": "simpo", "num_negatives": 2},
            "objective 'simpo' is pairwise: num_negatives must be 1, got 2 (use softmax_simpo)",
        ),
        ({"gamma": -0.1}, "gamma must be a finite number >= 0, got -0.1"),
        ({"gamma": math.nan}, "gamma must be a finite number >= 0, got nan"),
        (
            {"name": "sdpo", "token_mean": True},
            "token_mean applies to ('ipo', 'ipo_k', 'simpo', "
            "'softmax_simpo'), not 'sdpo'; leave it unset",
        ),
        (
            {"name": "dynamicpo", "dynamicpo_spread": 1.0},
            "dynamicpo_spread must be in [0, 1), got 1.0",
        ),
        (
            {"name": "dynamicpo", "dynamicpo_margin": math.inf},
            "dynamicpo_margin must be finite, got inf",
        ),
    ],
)
def test_settings_refused(kwargs, message):
    with pytest.raises(ValueError) as err:
        ObjectiveArgs(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "name, k, reference",
    [
        ("sft", 3, False),
        ("sdpo", 3, True),
        ("dpo", 1, True),
        ("dpo_k", 3, True),
        ("dmpo", 3, True),
        ("ipo", 1, True),
        ("ipo_k", 3, True),
        ("simpo", 1, False),
        ("softmax_simpo", 3, False),
        ("dynamicpo", 3, True),
    ],
)
def test_needs_reference(name, k, reference):
    args = ObjectiveArgs(name=name, num_negatives=k)
    assert args.needs_reference is reference
    assert needs_reference(args) is (reference and name != "sft")
    assert args.is_preference is (name != "sft")


def test_token_mean_defaults():
    """Unset: SimPO on token means (its definition), IPO on sums (its paper's margin)."""
    assert uses_token_mean(ObjectiveArgs(name="softmax_simpo"))
    assert uses_token_mean(ObjectiveArgs(name="simpo", num_negatives=1))
    assert not uses_token_mean(ObjectiveArgs(name="ipo_k"))
    assert uses_token_mean(ObjectiveArgs(name="ipo_k", token_mean=True))
    assert not uses_token_mean(ObjectiveArgs(name="softmax_simpo", token_mean=False))


def _batch(k: int = 2):
    gen = torch.Generator().manual_seed(0)
    pol = -torch.rand(3, 1 + k, generator=gen) * 10
    ref = -torch.rand(3, 1 + k, generator=gen) * 10
    n = torch.randint(1, 6, (3, 1 + k), generator=gen)
    return pol, ref, n


def test_options():
    """What each objective is given beyond the common five arguments."""
    _, _, n = _batch()
    assert objective_options(ObjectiveArgs(name="sdpo"), n) == {}
    assert objective_options(ObjectiveArgs(name="ipo_k"), n) == {}
    opts = objective_options(ObjectiveArgs(name="ipo_k", token_mean=True), n)
    assert_close(opts["chosen_lengths"], n[:, 0])
    assert_close(opts["rejected_lengths"], n[:, 1:])
    opts = objective_options(ObjectiveArgs(name="softmax_simpo", gamma=0.3), n)
    assert opts["gamma"] == 0.3
    assert_close(opts["rejected_lengths"], n[:, 1:])
    opts = objective_options(ObjectiveArgs(name="softmax_simpo", token_mean=False), n)
    assert_close(opts["chosen_lengths"], torch.ones(3, dtype=n.dtype))
    assert_close(opts["rejected_lengths"], torch.ones(3, 2, dtype=n.dtype))
    assert objective_options(
        ObjectiveArgs(name="dynamicpo", dynamicpo_margin=1.0, dynamicpo_spread=0.25), n
    ) == {"margin": 1.0, "spread": 0.25}


@pytest.mark.parametrize("name", ["sdpo", "dpo_k", "dmpo", "ipo_k", "dynamicpo"])
def test_loss_is_the_registered_objective(name):
    pol, ref, n = _batch()
    args = ObjectiveArgs(name=name, beta=0.7)
    out = objective_loss(args, pol, n, ref)
    expected = OBJECTIVES[name](pol[:, 0], pol[:, 1:], ref[:, 0], ref[:, 1:], 0.7)
    assert_close(out.losses, expected.losses)
    with pytest.raises(ValueError, match=f"objective '{name}' needs reference log-probs"):
        objective_loss(args, pol, n, None)


def test_softmax_simpo_from_the_settings():
    """softmax_simpo reads no reference; with beta = 2, gamma = 0.5 and the token counts
    L = softplus(0.5 + logsumexp_k(2 l(d_k)/|d_k| - 2 l(p)/|p|))."""
    pol, _, n = _batch()
    out = objective_loss(ObjectiveArgs(name="softmax_simpo", beta=2.0, gamma=0.5), pol, n, None)
    r = 2.0 * pol / n
    expected = torch.nn.functional.softplus(0.5 + torch.logsumexp(r[:, 1:] - r[:, :1], dim=1))
    assert_close(out.losses, expected)


def test_pairwise_simpo_and_ipo_from_the_settings():
    pol, ref, n = _batch(k=1)
    simpo = objective_loss(ObjectiveArgs(name="simpo", num_negatives=1, gamma=0.0), pol, n, None)
    r = pol / n
    assert_close(simpo.losses, -torch.nn.functional.logsigmoid(r[:, 0] - r[:, 1]))
    ipo = objective_loss(ObjectiveArgs(name="ipo", num_negatives=1, beta=0.5), pol, n, ref)
    h = pol - ref
    assert_close(ipo.losses, (h[:, 0] - h[:, 1] - 1.0) ** 2)


@pytest.mark.parametrize("name, k", [("simpo", 1), ("softmax_simpo", 3), ("sdpo", 3)])
def test_full_fine_tuning_builds_a_frozen_copy_only_with_a_reference(synthetic_dir, name, k):
    """Full fine-tuning with ``reference: live`` keeps a frozen copy of the model as the
    reference: the reference-free objectives build none."""
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import ModelArgs
    from tests.conftest import TINY

    module = SDPOModule(
        source=ModelArgs(tiny_config=TINY, tokenizer_path=str(synthetic_dir / "tokenizer")),
        objective=ObjectiveArgs(name=name, num_negatives=k),
    )
    module.configure_model()
    assert (module.reference_model is not None) is (name == "sdpo")
