"""GRU4Rec / Caser / SASRec baselines on tiny data: ids, masks, shapes, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdpo_lightning.baselines.caser import Caser
from sdpo_lightning.baselines.cli import main as baseline_main
from sdpo_lightning.baselines.gru4rec import GRU4Rec
from sdpo_lightning.baselines.sasrec import SASRec
from sdpo_lightning.baselines.seqrec_data import ItemVocab, SeqRecDataset
from sdpo_lightning.data.records import Example
from sdpo_lightning.evaluation.report import load_summary, read_predictions

ITEMS = [f"i{k}" for k in range(8)]


def cycle_rows(n: int, offset: int = 0) -> list[dict]:
    """Rows whose target is the item after the history's newest one (cyclic catalogue)."""
    rows = []
    for r in range(n):
        start = (3 * r + offset) % 8  # stride 3: no row continues the previous one
        hist = [ITEMS[(start + j) % 8] for j in range(3)]
        target = ITEMS[(start + 3) % 8]
        others = [ITEMS[(start + 3 + j) % 8] for j in (2, 4, 6)]
        cands = sorted([target, *others], key=lambda t: (hash(t) + r) % 7)
        rows.append({"historyList": "::".join(hist), "itemList": cands, "trueSelection": target})
    return rows


def test_vocab_and_left_padding() -> None:
    train = [Example(("b", "a"), ("c", "z"), "c")]
    vocab = ItemVocab(train)
    assert vocab.ids == {"a": 2, "b": 3, "c": 4, "z": 5} and len(vocab) == 6
    assert vocab.encode(["c", "unseen"]) == [4, 1]
    item = SeqRecDataset(train, vocab, max_len=4)[0]
    assert item["seq"].tolist() == [0, 0, 3, 2]
    assert item["candidates"].tolist() == [4, 5] and int(item["target_index"]) == 0


@pytest.mark.parametrize("cls", [GRU4Rec, Caser, SASRec])
def test_logits_shape_and_finite_with_padding(cls: type) -> None:
    torch.manual_seed(0)
    model = cls(num_items=11, max_len=5, d=8).eval()
    seq = torch.tensor([[0, 0, 0, 0, 4], [2, 3, 4, 5, 6]])
    out = model.logits(seq)
    assert out.shape == (2, 11) and torch.isfinite(out).all()


def test_sasrec_mask_is_causal_and_hides_padding_keys() -> None:
    model = SASRec(num_items=6, max_len=3, d=4, num_heads=2)
    mask = model._mask(torch.tensor([[0, 2, 3]]))  # (heads, L, L)
    want = torch.tensor([[False, True, True], [True, False, True], [True, False, False]])
    assert mask.shape == (2, 3, 3)
    assert torch.equal(mask[0], want) and torch.equal(mask[1], want)


def test_sasrec_newest_output_ignores_padding_length() -> None:
    torch.manual_seed(0)
    model = SASRec(num_items=9, max_len=4, d=8, dropout=0.0).eval()
    model.pos.weight.data.zero_()  # position-free: only padding could change the output
    a = model.logits(torch.tensor([[0, 0, 3, 5]]))
    torch.testing.assert_close(a, model.logits(torch.tensor([[0, 3, 5]])))  # less padding
    assert not torch.allclose(a, model.logits(torch.tensor([[0, 0, 4, 5]])))  # other history


def test_sasrec_starts_near_uniform_over_items() -> None:
    """Item embeddings at std d^-1/2 keep the first logits O(1): the start cross-entropy is
    about ln(V) (with nn.Embedding's N(0, 1) it was ~55 nats for d=64, V=4599, too far for
    40 LastFM epochs to come back from)."""
    torch.manual_seed(0)
    v = 4599
    model = SASRec(num_items=v, max_len=10, d=64, dropout=0.0).eval()
    seq = torch.randint(1, v, (256, 10))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model.logits(seq), torch.randint(1, v, (256,)))
    assert abs(loss.item() - torch.log(torch.tensor(float(v))).item()) < 1.5, loss
    assert torch.all(model.embed.weight[0] == 0)  # padding row stays zero


@pytest.mark.parametrize("model", ["gru4rec.GRU4Rec", "caser.Caser", "sasrec.SASRec"])
def test_cli_fit_learns_a_pattern_and_writes_report(model: str, tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text(json.dumps(cycle_rows(64)))
    (tmp_path / "valid.json").write_text(json.dumps(cycle_rows(16, offset=3)))
    assert (
        baseline_main(
            [  # sdpo-baseline fit ... dispatches to the LightningCLI
                "fit",
                "--seed_everything",
                "0",
                f"--model=sdpo_lightning.baselines.{model}",
                "--model.init_args.d",
                "16",
                "--model.init_args.lr",
                "0.02",
                "--model.init_args.dropout",
                "0.0",
                "--data.train_file",
                str(tmp_path / "train.json"),
                "--data.test_file",
                str(tmp_path / "valid.json"),
                "--data.dataset",
                "toy",
                "--data.max_len",
                "3",
                "--data.batch_size",
                "16",
                "--trainer.max_epochs",
                "25",
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
                "--trainer.logger",
                "false",
                "--model.init_args.item_table_dir",
                str(tmp_path / "items"),
            ]
        )
        == 0
    )
    summary = load_summary(tmp_path / "run/summary.json")
    assert summary["dataset"] == "toy" and summary["n_examples"] == 16
    assert summary["protocols"]["ranking"]["hr@1"]["value"] >= 0.9  # chance is 0.25
    recs = read_predictions(tmp_path / "run/predictions.jsonl")
    assert [r["index"] for r in recs] == list(range(16))
    assert all(len(r["scores"]) == 4 and r["valid"] for r in recs)
    from sdpo_lightning.modeling.hybrid import (
        ItemTable,
    )  # hybrid prompts' item table, written by `test`

    table = ItemTable.load(tmp_path / "items")
    assert sorted(table.titles) == ITEMS and table.embeddings.shape == (8, 16)
    assert model.split(".")[1] in table.source and torch.isfinite(table.embeddings).all()
