"""Hybrid item prompts through the ``sdpo`` CLI on tiny data: hybrid SFT with LLaRA's curriculum
(projector trained, exported with the adapter) → S-DPO from that adapter (projector frozen,
trunk cache and cached reference on) → ``test`` of both protocols with the hybrid folder found
in the adapter on its own."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdpo_lightning.cli import cli_main
from sdpo_lightning.data.readers import load_examples
from sdpo_lightning.modeling.hybrid import ItemTable
from tests.conftest import tiny_config


def _item_table(synthetic_dir: Path, out: Path) -> Path:
    """A table of every second training title (the others take the unknown vector)."""
    titles = sorted(
        {
            t
            for ex in load_examples(synthetic_dir / "train.json").examples
            for t in (*ex.history, *ex.candidates)
        }
    )[::2]
    g = torch.Generator().manual_seed(0)
    return ItemTable(titles, torch.randn(len(titles), 8, generator=g), source="test").save(out)


def _rows(root: Path) -> list[dict]:
    (path,) = sorted(root.glob("csv/version_*/metrics.csv"))[-1:]
    return list(csv.DictReader(path.open()))


def test_hybrid_sft_then_sdpo_then_test(tmp_path, synthetic_dir):
    table = _item_table(synthetic_dir, tmp_path / "items")
    lora = {
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "layers_to_transform": [1],
    }
    hybrid = {
        "item_table": str(table),
        "projector_hidden": 16,
        "curriculum_start": 0.0,
        "curriculum_end": 1.0,
    }
    with pytest.raises(ValueError, match="hybrid projector trains"):
        cli_main(
            [
                "fit",
                "-c",
                str(
                    tiny_config(
                        tmp_path,
                        synthetic_dir,
                        "bad",
                        objective="sft",
                        lora=lora,
                        hybrid=hybrid,
                        trunk_cache=True,
                    )
                ),
            ]
        )

    sft = tiny_config(tmp_path, synthetic_dir, "sft", objective="sft", lora=lora, hybrid=hybrid)
    cli_main(["fit", "-c", str(sft)])
    probs = [
        float(r["train/hybrid_probability"])
        for r in _rows(tmp_path / "sft")
        if r.get("train/hybrid_probability")
    ]
    assert probs == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])  # 4 steps, curriculum 0 -> 1
    adapter = tmp_path / "sft" / "export"
    saved = load_file(str(adapter / "hybrid" / "projector.safetensors"))
    assert set(saved) == {
        "unknown",
        "projector.0.weight",
        "projector.0.bias",
        "projector.2.weight",
        "projector.2.bias",
    }
    assert ItemTable.load(adapter / "hybrid").titles == ItemTable.load(table).titles
    ckpt = torch.load(
        tmp_path / "sft" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert any("embed_tokens.projector" in k for k in ckpt["state_dict"])  # the projector trained
    # testing the SFT adapter: nothing trains, so the trunk cache and the persisted test trunk apply
    for run in ("a", "b"):
        cli_main(
            [
                "test",
                "-c",
                str(sft),
                "--model.source.init_adapter",
                str(adapter),
                "--model.scoring.trunk_cache",
                "true",
                "--model.scoring.eval_trunk_dir",
                str(tmp_path / "eval_trunk"),
                "--model.output.output_dir",
                str(tmp_path / run),
            ]
        )
    assert len(list((tmp_path / "eval_trunk").glob("trunk-1-*.pt"))) == 1
    a, b = (
        json.loads((tmp_path / r / "summary.json").read_text())["protocols"]["ranking"]
        for r in "ab"
    )
    assert a["hr@1"]["value"] == b["hr@1"]["value"] and a["mrr"]["value"] == pytest.approx(
        b["mrr"]["value"]
    )

    sdpo = tiny_config(
        tmp_path,
        synthetic_dir,
        "sdpo",
        objective="sdpo",
        lora=lora,
        init_adapter=str(adapter),
        trunk_cache=True,
        reference="cached",
    )
    cli_main(["fit", "-c", str(sdpo)])
    first = next(r for r in _rows(tmp_path / "sdpo") if r.get("train/loss"))
    assert float(first["train/loss"]) == pytest.approx(math.log(4.0), abs=1e-4)  # at the reference
    after = load_file(str(tmp_path / "sdpo" / "export" / "hybrid" / "projector.safetensors"))
    assert all(torch.equal(saved[k], after[k]) for k in saved)  # frozen in the preference stage

    for name, extra in (("free", []), ("constrained", ["--model.eval.constrained", "true"])):
        out = tmp_path / f"test_{name}"
        cli_main(
            [
                "test",
                "-c",
                str(sdpo),
                "--model.source.init_adapter",
                str(tmp_path / "sdpo" / "export"),
                "--model.scoring.trunk_cache",
                "false",
                "--model.output.output_dir",
                str(out),
                *extra,
            ]
        )
        summary = json.loads((out / "summary.json").read_text())
        preds = [json.loads(line) for line in (out / "predictions.jsonl").open()]
        assert summary["n_examples"] == len(preds) == 8
        assert all(
            0.0 <= summary["protocols"][p]["hr@1"]["value"] <= 1.0
            for p in ("generation", "ranking")
        )
        assert all(math.isfinite(s) for p in preds for s in p["scores"])
        assert all("<item>" in p["prompt"] for p in preds)

    # a hybrid adapter brings its own item table, whatever the config names
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import ModelArgs

    export = tmp_path / "sdpo" / "export"
    source = ModelArgs(tokenizer_path=str(synthetic_dir / "tokenizer"), init_adapter=str(export))
    module = SDPOModule(
        source=source, hybrid={"item_table": str(tmp_path / "elsewhere"), "projector_hidden": 16}
    )
    assert module.hparams.hybrid.item_table == str(export / "hybrid")
    assert module.item_table.titles == ItemTable.load(table).titles
    auto = SDPOModule(source=source)
    assert auto.hparams.hybrid.projector_hidden == 16  # read from the saved projector
