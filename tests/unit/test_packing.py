"""Tests for sdpo_lightning.scoring.packing: the packed-row layout on small hand-written batches.

Batch used throughout (B=2, P=3, K=2, C=3):

* example 0: prompt ``[pad, 7, 8]``, completions ``[11, 12]`` and ``[13]``;
* example 1: prompt ``[5, 6, 7]``, completions ``[21]`` and an empty one.

T = 3 (example 0's three real completion tokens), so L = P + T = 6 and the rows are
``[pad, 7, 8, 11, 12, 13]`` and ``[5, 6, 7, 21, pad, pad]``.

The last tests read the package's source and fail if a module imports another module's private
(underscore) names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from sdpo_lightning.scoring.packing import (
    PACKED_ATTN_IMPLEMENTATIONS,
    attn_implementation,
    completion_src,
    kept_logit_positions,
    pack_row,
    packed_attention_mask,
    ragged_pack,
    unpack_completions,
)

PACKAGE = Path(__file__).resolve().parents[2] / "sdpo_lightning"


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    p_ids = torch.tensor([[0, 7, 8], [5, 6, 7]])  # (B, P)
    p_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # (B, P)
    c_ids = torch.tensor([[[11, 12, 0], [13, 0, 0]], [[21, 0, 0], [0, 0, 0]]])  # (B, K, C)
    c_mask = (c_ids != 0).long()  # (B, K, C)
    return p_ids, p_mask, c_ids, c_mask


def test_ragged_pack_places_only_real_completion_tokens() -> None:
    _, p_mask, _, c_mask = batch()
    layout = ragged_pack(p_mask, c_mask)
    assert (layout.prompt_len, layout.num_completions, layout.completion_len) == (3, 2, 3)
    assert layout.total == 3 and layout.length == 6
    # slot (k, j) -> packed position; L = 6 marks a padding slot (dropped)
    assert layout.dest.tolist() == [[3, 4, 6, 5, 6, 6], [3, 6, 6, 6, 6, 6]]
    assert layout.segment.tolist() == [[-1, -1, -1, 0, 0, 1], [-1, -1, -1, 0, -2, -2]]


def test_position_ids_restart_after_the_real_prompt_for_every_completion() -> None:
    _, p_mask, _, c_mask = batch()
    layout = ragged_pack(p_mask, c_mask)
    # example 0: two real prompt tokens (0, 1), left padding gets 0; c0 at 2, 3; c1 at 2
    # example 1: prompt 0..2, c0 at 3, row padding 0
    assert layout.position_ids.tolist() == [[0, 0, 1, 2, 3, 2], [0, 1, 2, 3, 0, 0]]


def test_no_real_completion_token_still_keeps_one_slot() -> None:
    p_mask = torch.tensor([[1, 1]])
    layout = ragged_pack(p_mask, torch.zeros((1, 2, 2), dtype=torch.long))
    assert layout.total == 1 and layout.length == 3
    assert layout.dest.tolist() == [[3, 3, 3, 3]]
    assert layout.segment.tolist() == [[-1, -1, -2]]
    assert layout.position_ids.tolist() == [[0, 1, 0]]


def test_pack_row_writes_prompt_then_completions_then_padding() -> None:
    p_ids, p_mask, c_ids, c_mask = batch()
    row = pack_row(p_ids, c_ids, ragged_pack(p_mask, c_mask))
    assert row.dtype == p_ids.dtype
    assert row.tolist() == [[0, 7, 8, 11, 12, 13], [5, 6, 7, 21, 0, 0]]


def test_pack_unpack_round_trip_of_ids_and_features() -> None:
    p_ids, p_mask, c_ids, c_mask = batch()
    layout = ragged_pack(p_mask, c_mask)
    assert torch.equal(unpack_completions(pack_row(p_ids, c_ids, layout), layout), c_ids)

    g = torch.Generator().manual_seed(0)
    prompt_h = torch.randn(2, 3, 4, generator=g)  # (B, P, H)
    comp_h = torch.randn(2, 2, 3, 4, generator=g) * c_mask[..., None]  # (B, K, C, H)
    row = pack_row(prompt_h, comp_h, layout)  # (B, L, H)
    assert row.shape == (2, 6, 4)
    assert torch.equal(row[:, :3], prompt_h)
    assert torch.equal(row[0, 3:5], comp_h[0, 0, :2]) and torch.equal(row[0, 5], comp_h[0, 1, 0])
    assert torch.equal(row[1, 3], comp_h[1, 0, 0]) and not bool(row[1, 4:].any())
    assert torch.equal(unpack_completions(row, layout), comp_h)


def test_unpack_zeroes_padding_slots_whatever_the_row_holds() -> None:
    _, p_mask, _, c_mask = batch()
    layout = ragged_pack(p_mask, c_mask)
    row = torch.arange(1, 13, dtype=torch.float32).reshape(2, 6)  # no zero anywhere
    assert unpack_completions(row, layout).tolist() == [
        [[4.0, 5.0, 0.0], [6.0, 0.0, 0.0]],
        [[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ]


ALLOWED_0 = [
    [1, 0, 0, 0, 0, 0],  # left padding: itself only
    [0, 1, 0, 0, 0, 0],  # prompt: causal over real prompt tokens
    [0, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 0, 0],  # c0: real prompt + its own earlier tokens
    [0, 1, 1, 1, 1, 0],
    [0, 1, 1, 0, 0, 1],  # c1: real prompt + itself, never c0
]
ALLOWED_1 = [
    [1, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 0, 0],  # c0
    [1, 1, 1, 0, 1, 0],  # row padding: the prompt and itself (never read)
    [1, 1, 1, 0, 0, 1],
]


def test_block_attention_mask_sdpa_is_boolean() -> None:
    _, p_mask, _, c_mask = batch()
    layout = ragged_pack(p_mask, c_mask)
    mask = packed_attention_mask(p_mask, layout.segment, "sdpa", torch.float32)
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 6, 6)
    assert mask[0, 0].int().tolist() == ALLOWED_0
    assert mask[1, 0].int().tolist() == ALLOWED_1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_attention_mask_eager_is_additive(dtype: torch.dtype) -> None:
    _, p_mask, _, c_mask = batch()
    layout = ragged_pack(p_mask, c_mask)
    mask = packed_attention_mask(p_mask, layout.segment, "eager", dtype)
    assert mask.dtype == dtype and mask.shape == (2, 1, 6, 6)
    want = torch.tensor([ALLOWED_0, ALLOWED_1]).bool()[:, None]
    assert bool((mask[want] == 0).all())
    assert bool((mask[~want] == torch.finfo(dtype).min).all())


def test_kept_logits_and_where_each_completion_token_reads() -> None:
    _, p_mask, _, c_mask = batch()
    layout = ragged_pack(p_mask, c_mask)
    assert kept_logit_positions(layout, torch.device("cpu")).tolist() == [2, 3, 4]  # P-1 .. L-2
    # first token of each completion: the last prompt position (kept index 0); any other: the
    # position before it (dest - P); padding slots: any valid index
    src = completion_src(layout)
    assert src.tolist()[0] == [0, 1, 2, 0, 2, 2]
    assert src.tolist()[1][0] == 0
    assert bool(((src >= 0) & (src < layout.total)).all())


def test_attn_implementation_defaults_to_eager() -> None:
    class Config:
        _attn_implementation = "sdpa"

    class Model(torch.nn.Module):
        config = Config()

    assert attn_implementation(Model()) == "sdpa"
    assert attn_implementation(torch.nn.Linear(1, 1)) == "eager"
    assert PACKED_ATTN_IMPLEMENTATIONS == ("sdpa", "eager")


# --- no module imports another module's private names -------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_project_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def _private_module_outside_its_package(module: str, importer: str) -> bool:
    """``a.b._c.d`` may only be imported from inside ``a.b`` (the package owning ``_c``)."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            owner = ".".join(parts[:i])
            if not (importer == owner or importer.startswith(owner + ".")):
                return True
    return False


def private_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import in ``source`` (module ``module``) of another project module's private name.

    Checks ``from X import _name``, imports of a private submodule from outside its package, and
    ``alias._name`` on an imported project module. Third-party modules are not checked.
    """
    found, aliases = [], set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sdpo_lightning":
                continue
            if _private_module_outside_its_package(target, module):
                found.append(f"{module}:{node.lineno}: from {target} import ...")
            for a in node.names:
                if _is_private(a.name) and target != module:
                    found.append(f"{module}:{node.lineno}: from {target} import {a.name}")
                elif _is_project_module(f"{target}.{a.name}"):
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] != "sdpo_lightning":
                    continue
                if _private_module_outside_its_package(a.name, module):
                    found.append(f"{module}:{node.lineno}: import {a.name}")
                aliases.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_planted_private_imports() -> None:
    src = (
        "from sdpo_lightning.scoring.logps import check_inputs, _hidden\n"
        "from .scoring import _other\n"
        "from sdpo_lightning.analysis._deps import require_pandas\n"
        "import sdpo_lightning.scoring.logps as sc\n"
        "from sdpo_lightning.scoring import trunk_cache\n"
        "from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO\n"
        "x = sc._private(1) + trunk_cache._key + sc.completion_logps\n"
    )
    found = private_imports("sdpo_lightning.evaluation.evaluator", src)
    assert len(found) == 5, found
    same_package = "from ._deps import require_pandas\n"
    assert private_imports("sdpo_lightning.analysis.cli", same_package) == []
    own_name = "from sdpo_lightning.scoring.logps import _x\n"
    assert private_imports("sdpo_lightning.scoring.logps", own_name) == []


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += private_imports(
            _module_name(path), path.read_text(encoding="utf-8"), path.name == "__init__.py"
        )
    assert not found, "private names imported across modules:\n" + "\n".join(found)
