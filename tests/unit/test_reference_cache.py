"""The reference log-prob cache: its key, load-or-build, lookups, and that its scores are the
reference's (LoRA with the adapter off; full fine-tuning: the initial weights), also when the
work is split over processes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.scoring.logps import completion_logps
from sdpo_lightning.scoring.reference_cache import (
    ReferenceCache,
    cache_key,
    data_identity,
    eval_mode,
    reference_identity,
    score_dataset,
)
from sdpo_lightning.training.module import SDPOModule
from sdpo_lightning.training.module_args import grouped_kwargs
from tests.conftest import TINY

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
N_TRAIN, N_VAL = 10, 5


@pytest.fixture(scope="module")
def small_dir(synthetic_dir, tmp_path_factory) -> Path:
    """The first rows of the synthetic splits; the last training row keeps only 6 candidates."""
    out = tmp_path_factory.mktemp("small")
    train = json.loads((synthetic_dir / "train.json").read_text())[:N_TRAIN]
    row = train[-1]
    keep = [c for c in row["itemList"] if c != row["trueSelection"]][:5] + [row["trueSelection"]]
    row["itemList"] = keep
    (out / "train.json").write_text(json.dumps(train))
    (out / "valid.json").write_text(
        json.dumps(json.loads((synthetic_dir / "valid.json").read_text())[:N_VAL])
    )
    return out


def make(
    synthetic_dir: Path,
    data_dir: Path,
    model: dict | None = None,
    data: dict | None = None,
    tokenizer=None,
) -> tuple[SDPOModule, RecDataModule]:
    kw = dict(
        tokenizer_path=str(synthetic_dir / "tokenizer"),
        tiny_config=TINY,
        lora=LORA,
        reference="cached",
    )
    module = SDPOModule(**grouped_kwargs({**kw, **(model or {})}))  # model: flat names, regrouped
    module.configure_model()
    dkw = dict(
        train_file=str(data_dir / "train.json"),
        val_file=str(data_dir / "valid.json"),
        batch_size=2,
        eval_batch_size=3,
        max_length=256,
        prompt_templates="music",
    )
    dm = RecDataModule(**{**dkw, **(data or {})})
    dm.tokenizer = tokenizer or module.tokenizer
    if tokenizer is not None:
        module.tokenizer = tokenizer
    dm.setup("fit")
    return module, dm


def key_of(module: SDPOModule, dm: RecDataModule, split: str = "fit") -> str:
    return cache_key(
        reference_identity(module.hparams.source), data_identity(dm, split), dm.datasets[split]
    )


# ---------------------------------------------------------------------------- the key
def test_key_is_stable_and_ignores_what_does_not_change_the_scores(
    synthetic_dir, small_dir, tmp_path
):
    base = key_of(*make(synthetic_dir, small_dir))
    assert key_of(*make(synthetic_dir, small_dir)) == base
    # the same content at another path, other LoRA / optimisation / batching settings: same scores
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for name in ("train.json", "valid.json"):
        (copy_dir / name).write_bytes((small_dir / name).read_bytes())
    assert key_of(*make(synthetic_dir, copy_dir)) == base
    same = make(
        synthetic_dir,
        small_dir,
        model={
            "lora": {**LORA, "r": 8},
            "learning_rate": 0.5,
            "beta": 2.0,
            "num_negatives": 5,
            "scoring": "naive",
        },
        data={"batch_size": 7, "negative_sampling": "tempered", "num_negatives": 5},
    )
    assert key_of(*same) == base


@pytest.mark.parametrize(
    "change",
    [
        "data_content",
        "template",
        "template_seed",
        "max_length",
        "tokenizer",
        "init_seed",
        "tiny_config",
        "dtype",
    ],
)
def test_key_changes_with_data_template_max_length_tokenizer_and_model(
    synthetic_dir, small_dir, tmp_path, change
):
    base_module, base_dm = make(synthetic_dir, small_dir)
    model, data, tok, data_dir = {}, {}, None, small_dir
    if change == "data_content":
        rows = json.loads((small_dir / "train.json").read_text())
        rows[0]["historyList"] = list(rows[0]["historyList"]) + [rows[1]["trueSelection"]]
        data_dir = tmp_path / "changed"
        data_dir.mkdir()
        (data_dir / "train.json").write_text(json.dumps(rows))
        (data_dir / "valid.json").write_bytes((small_dir / "valid.json").read_bytes())
    elif change == "template":
        data["prompt_templates"] = "After {history} comes which of {candidates}?\nAnswer:"
    elif change == "template_seed":
        data["seed"] = 1
    elif change == "max_length":
        data["max_length"] = (
            1000  # nothing is truncated either way: the setting alone changes the key
        )
    elif change == "tokenizer":
        tok = copy.deepcopy(base_module.tokenizer)
        tok.add_tokens(["<extra-token>"])
    elif change == "init_seed":
        model["init_seed"] = 1
    elif change == "tiny_config":
        model["tiny_config"] = {**TINY, "num_hidden_layers": 1}
    elif change == "dtype":
        model["dtype"] = "bfloat16"
    module, dm = make(synthetic_dir, data_dir, model=model, data=data, tokenizer=tok)
    assert key_of(module, dm) != key_of(base_module, base_dm)


def test_reference_identity_tracks_model_files_and_adapter_content(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"lora v1")
    hp = {"model_name_or_path": str(model_dir), "init_adapter": str(adapter), "dtype": "float32"}
    first = reference_identity(hp)
    assert reference_identity(hp) == first
    (adapter / "adapter_model.safetensors").write_bytes(b"lora v2")
    second = reference_identity(hp)
    assert second["adapter_sha256"] != first["adapter_sha256"]
    (model_dir / "model.safetensors").write_bytes(b"new weights!")
    assert reference_identity(hp)["model_files"] != second["model_files"]
    # a GGUF file inside a directory: only that file is stamped
    (model_dir / "m.gguf").write_bytes(b"gguf")
    gguf = reference_identity({"model_name_or_path": str(model_dir), "gguf_file": "m.gguf"})
    assert [f[0] for f in gguf["model_files"]] == ["m.gguf"]


# ---------------------------------------------------------------------------- load or build
def test_second_build_reuses_the_file_and_a_changed_key_rebuilds(
    synthetic_dir, small_dir, tmp_path, count_builds
):
    root = tmp_path / "cache"
    module, dm = make(synthetic_dir, small_dir)
    first = ReferenceCache.build(module.reference_source(), dm, root)
    assert count_builds == [N_TRAIN, N_VAL]
    assert {s["hit"] for s in first.stats.values()} == {False}
    files = sorted(p.name for p in root.iterdir())
    assert len(files) == 2 and files[0].startswith("fit-") and files[1].startswith("validate-")

    module2, dm2 = make(synthetic_dir, small_dir)  # a new run, same settings
    second = ReferenceCache.build(module2.reference_source(), dm2, root)
    assert count_builds == [N_TRAIN, N_VAL]  # the scorer was not called again
    assert {s["hit"] for s in second.stats.values()} == {True}
    for split in ("fit", "validate"):
        assert torch.equal(first.tables[split], second.tables[split])

    module3, dm3 = make(synthetic_dir, small_dir, data={"max_length": 300})
    ReferenceCache.build(module3.reference_source(), dm3, root)
    assert count_builds == [N_TRAIN, N_VAL, N_TRAIN, N_VAL]
    assert len(list(root.iterdir())) == 4  # the old files stay valid for their keys


def test_unreadable_or_foreign_file_is_rebuilt(synthetic_dir, small_dir, tmp_path, count_builds):
    root = tmp_path / "cache"
    module, dm = make(synthetic_dir, small_dir)
    good = ReferenceCache.build(module.reference_source(), dm, root, splits=("fit",))
    path = Path(good.stats["fit"]["path"])
    path.write_bytes(b"not a torch file")
    again = ReferenceCache.build(module.reference_source(), dm, root, splits=("fit",))
    assert count_builds == [N_TRAIN, N_TRAIN] and not again.stats["fit"]["hit"]
    torch.testing.assert_close(again.tables["fit"], good.tables["fit"], rtol=0, atol=1e-6)
    torch.save({"key": "another key", "scores": good.tables["fit"]}, path)
    ReferenceCache.build(module.reference_source(), dm, root, splits=("fit",))
    assert count_builds == [N_TRAIN] * 3


# ---------------------------------------------------------------------------- lookups and values
def _live_reference(module: SDPOModule, dm: RecDataModule, split: str, i: int) -> torch.Tensor:
    """All candidates of one example, scored by the reference the naive way → (M_i,)."""
    from sdpo_lightning.data.collate import make_collate

    batch = make_collate(module.tokenizer.pad_token_id)([dm.datasets[split][i]])
    with module.reference_scorer() as (model, _):
        with eval_mode(model):
            return completion_logps(
                model,
                batch["prompt_input_ids"],
                batch["prompt_attention_mask"],
                batch["candidate_input_ids"],
                batch["candidate_attention_mask"],
                mode="naive",
            ).logps[0]


def test_lookup_shapes_padding_and_values_equal_the_live_reference(
    synthetic_dir, small_dir, tmp_path
):
    module, dm = make(synthetic_dir, small_dir)
    cache = ReferenceCache.build(module.reference_source(), dm, tmp_path)
    table = cache.tables["fit"]
    assert table.shape == (N_TRAIN, 20) and table.dtype == torch.float32
    assert cache.lookup("fit", torch.tensor([3, 0, 3])).shape == (3, 20)
    assert torch.equal(cache.lookup("fit", [N_TRAIN - 1]), table[N_TRAIN - 1 :])
    short = table[N_TRAIN - 1]
    assert (
        torch.isfinite(short[:6]).all() and torch.isneginf(short[6:]).all()
    )  # the 6-candidate row
    assert torch.isfinite(table[: N_TRAIN - 1]).all() and (table[: N_TRAIN - 1] < 0).all()
    for split, i in (("fit", 0), ("fit", N_TRAIN - 1), ("validate", 2)):
        live = _live_reference(module, dm, split, i)
        torch.testing.assert_close(
            cache.lookup(split, [i])[0, : len(live)], live, rtol=0, atol=1e-4
        )
    with pytest.raises(KeyError, match="no cached reference scores for split 'test'"):
        cache.lookup("test", [0])
    with pytest.raises(IndexError, match="out of range"):
        cache.lookup("fit", [N_TRAIN])


def test_lora_cache_is_the_base_model_not_the_trained_adapter(synthetic_dir, small_dir, tmp_path):
    module, dm = make(synthetic_dir, small_dir)
    before = ReferenceCache.build(
        module.reference_source(), dm, tmp_path / "a", splits=("fit",)
    ).tables["fit"]
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # the adapter has "trained"
    after = ReferenceCache.build(
        module.reference_source(), dm, tmp_path / "b", splits=("fit",)
    ).tables["fit"]
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_full_fine_tuning_cache_uses_the_initial_weights(synthetic_dir, small_dir, tmp_path):
    module, dm = make(synthetic_dir, small_dir, model={"lora": None})
    assert module.reference_model is None  # cached: no frozen copy is kept for training
    before = ReferenceCache.build(
        module.reference_source(), dm, tmp_path / "a", splits=("fit",)
    ).tables["fit"]
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the policy has moved away from the reference
    after = ReferenceCache.build(
        module.reference_source(), dm, tmp_path / "b", splits=("fit",)
    ).tables["fit"]
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_multi_process_shares_cover_every_row_with_equal_work(synthetic_dir, small_dir):
    """Two simulated ranks: each scores rows ``rank::2`` in the same number of forwards; the
    all-gathered table equals the single-process one."""
    module, dm = make(synthetic_dir, small_dir)
    dataset, pad = dm.datasets["fit"], module.tokenizer.pad_token_id
    single = score_dataset(module.reference_source(), dataset, 2, pad)
    shares: dict[int, torch.Tensor] = {}
    seen: dict[int, list[list[int]]] = {0: [], 1: []}

    def run(rank: int) -> torch.Tensor:
        def all_gather(t):
            shares[rank] = t.clone()
            return torch.stack([shares.get(0, t), shares.get(1, t)])

        module._trainer = SimpleNamespace(
            world_size=2, global_rank=rank, strategy=SimpleNamespace(all_gather=all_gather)
        )
        try:
            with module.reference_scorer() as (model, scorer):

                def counting(batch, m):
                    seen[rank].append(batch["index"].tolist())
                    return scorer(batch, m)

                return score_dataset(module.reference_source(), dataset, 2, pad, model, counting)
        finally:
            module._trainer = None

    run(1)
    gathered = run(0)  # rank 0 goes second and sees rank 1's share
    torch.testing.assert_close(gathered, single, rtol=0, atol=1e-5)
    assert len(seen[0]) == len(seen[1]) == 3  # ceil(ceil(10 / 2) / 2)
    assert {i for b in seen[0] for i in b} == set(range(0, N_TRAIN, 2))
    assert {i for b in seen[1] for i in b} == set(range(1, N_TRAIN, 2))


def test_eval_mode_restores_each_submodule():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    model.train()
    model[1].eval()
    with eval_mode(model, None):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training
