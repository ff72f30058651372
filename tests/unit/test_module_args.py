"""The argument groups of SDPOModule: their own checks and the flat layout's migration."""

from __future__ import annotations

import pytest

from sdpo_lightning.errors import ConfigError
from sdpo_lightning.training.module_args import (
    EvalArgs,
    ModelArgs,
    ObjectiveArgs,
    ScoringArgs,
    as_group,
    check_flat_keys,
    grouped_kwargs,
    is_flat,
)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: ObjectiveArgs(name="sdpoo"),
            "objective must be one of ('sft', 'sdpo', 'dpo', "
            "'dpo_k', 'dmpo', 'ipo', 'ipo_k', 'simpo', "
            "'softmax_simpo', 'dynamicpo'), got 'sdpoo'",
        ),
        (
            lambda: ObjectiveArgs(name="dpo", num_negatives=3),
            "objective 'dpo' is pairwise: num_negatives must be 1, got 3 (use dpo_k or sdpo)",
        ),
        (
            lambda: ScoringArgs(mode="fast"),
            "scoring must be 'shared_prefix' or 'naive', got 'fast'",
        ),
        (lambda: ScoringArgs(reference="x"), "reference must be 'live' or 'cached', got 'x'"),
        (
            lambda: ScoringArgs(reference_cache_build="x"),
            "reference_cache_build must be auto, lazy or full, got 'x'",
        ),
        (
            lambda: EvalArgs(eval_protocols=["generation", "beam"]),
            "unknown eval_protocols ['beam']; choose from generation, ranking",
        ),
        (lambda: ModelArgs(dtype="float8"), "dtype must be one of"),
    ],
)
def test_groups_check_their_values(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_as_group_takes_a_mapping_and_refuses_unknown_keys():
    assert as_group(ObjectiveArgs, {"name": "sft"}) == ObjectiveArgs(name="sft")
    assert as_group(ObjectiveArgs, None) == ObjectiveArgs()
    with pytest.raises(ConfigError, match="ObjectiveArgs has no field 'betta'"):
        as_group(ObjectiveArgs, {"betta": 1})


def test_flat_arguments_are_regrouped():
    flat = {
        "objective": "dpo",
        "num_negatives": 1,
        "beta": 0.5,
        "scoring": "naive",
        "init_adapter": "a",
        "lora": None,
        "eval_protocols": ["ranking"],
    }
    assert is_flat(flat)
    assert grouped_kwargs(flat) == {
        "objective": {"name": "dpo", "num_negatives": 1, "beta": 0.5},
        "scoring": {"mode": "naive"},
        "source": {"init_adapter": "a"},
        "lora": None,
        "eval": {"eval_protocols": ["ranking"]},
    }
    grouped = {"objective": {"name": "sft"}, "optim": {"learning_rate": 0.1}}
    assert not is_flat(grouped) and grouped_kwargs(grouped) == grouped
    assert grouped_kwargs({"objective": {"name": "sft"}, "beta": 2}) == {
        "objective": {"name": "sft", "beta": 2}
    }


def test_a_flat_model_section_is_refused_with_the_new_place():
    with pytest.raises(ConfigError, match=r"^model.beta moved to model.objective.beta$"):
        check_flat_keys({"objective": {"name": "sdpo"}, "beta": 2})
    with pytest.raises(ConfigError, match=r"^model.scoring moved to model.scoring.mode$"):
        check_flat_keys({"init_args": {"scoring": "naive"}})
    check_flat_keys({"objective": {"name": "sdpo"}, "scoring": {"mode": "naive"}, "lora": None})
