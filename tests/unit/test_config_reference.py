"""docs/configuration.md is generated from the argument groups and kept up to date."""

from __future__ import annotations

import dataclasses

from sdpo_lightning.config_reference import format_type, render
from sdpo_lightning.training.module_args import FLAT_KEYS, GROUPS
from tests.conftest import REPO


def test_committed_reference_is_up_to_date():
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render(), (
        "docs/configuration.md is stale: python -m sdpo_lightning.config_reference "
        "> docs/configuration.md"
    )


def test_reference_lists_every_field_with_a_description():
    text = render()
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            row = next(
                line
                for line in text.splitlines()
                if line.startswith(f"| `model.{group}.{f.name}` |")
            )
            assert not row.endswith("|  |"), f"{group}.{f.name} has no description"
    assert "`model.lora.r`" in text and "`model.hybrid.item_table`" in text


def test_every_flat_key_has_a_new_place():
    for key, (group, name) in FLAT_KEYS.items():
        assert name in {f.name for f in dataclasses.fields(GROUPS[group])}, key
    assert FLAT_KEYS["objective"] == ("objective", "name")
    assert FLAT_KEYS["beta"] == ("objective", "beta")
    # every flat argument of the earlier signature but lora, hybrid (34), and the objective and
    # eval fields added since, whose flat form is refused with their place too
    assert len(FLAT_KEYS) == 34 + len(
        {"gamma", "token_mean", "dynamicpo_margin", "dynamicpo_spread"}
    ) + len(
        {
            "catalogue_file",
            "top_n",
            "beam_width",
            "beam_length_penalty",
            "all_item_prompts",
            "all_item_free_generation",
            "kv_sharing",
        }
    )
    assert FLAT_KEYS["gamma"] == ("objective", "gamma")


def test_format_type_uses_yaml_words():
    from typing import Literal

    assert format_type(int | None) == "int | null"
    assert format_type(Literal["a", "b"]) == "a | b"
    assert format_type(list[int] | None) == "list[int] | null"
