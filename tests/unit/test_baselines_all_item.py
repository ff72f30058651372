"""Baselines in the all-item protocol on tiny data: top N = argsort of the catalogue scores with
the history excluded, the same scores as the candidate-list protocol, reports ``sdpo-report`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdpo_lightning.baselines import ItemKNNScorer, MostPopularScorer, RandomScorer
from sdpo_lightning.baselines.all_item import all_item_records, scorer_all_item_records, top_n_items
from sdpo_lightning.baselines.cli import main as baseline_main
from sdpo_lightning.data.catalogue import Catalogue, write_catalogue
from sdpo_lightning.data.records import Example
from sdpo_lightning.evaluation.report import main as report_main
from sdpo_lightning.evaluation.report import read_predictions

ITEMS = [f"i{k}" for k in range(8)]


def ex(history: str, candidates: str, target: str) -> Example:
    return Example(
        history=tuple(history.split()), candidates=tuple(candidates.split()), target=target
    )


TRAIN = [
    ex("i0 i1", "i2 i3", "i2"),
    ex("i0 i1 i2", "i3 i0", "i3"),
    ex("i1", "i2 i4", "i2"),
    ex("i4", "i0 i1", "i0"),
    ex("i5 i6", "i7 i0", "i7"),
]
TEST = [ex("i0 i1", "i2 i5 i6 i7", "i2"), ex("i4 i2", "i3 i0 i7 i6", "i3"), ex("i6", "i7 i1", "i7")]
CAT = Catalogue(ITEMS, popularity=[1, 0, 2, 1, 0, 0, 0, 1], source="toy catalogue")


def fitted():
    return [
        RandomScorer(seed=3).fit(TRAIN),
        MostPopularScorer().fit(TRAIN),
        ItemKNNScorer(window=3, decay=0.7, pop_weight=0.1).fit(TRAIN),
    ]


@pytest.mark.parametrize("scorer", fitted(), ids=lambda s: s.name)
def test_top_n_is_the_argsort_of_catalogue_scores_without_history(scorer) -> None:
    records, n_in_hist = scorer_all_item_records(scorer, TEST, CAT, top_n=4)
    assert n_in_hist == 0
    for ex_, rec in zip(TEST, records, strict=False):
        scores = scorer.score_titles(ex_.history, ITEMS)
        part = rec["all_item"]
        assert len(part["items"]) == 4 and not set(part["items"]) & set(ex_.history)
        # the returned items are the best non-history items (ties in any order)
        rest = [
            s
            for t, s in zip(ITEMS, scores, strict=False)
            if t not in ex_.history and t not in part["items"]
        ]
        got = [scores[ITEMS.index(t)] for t in part["items"]]
        assert got == sorted(got, reverse=True) and max(rest) <= min(got)
        assert part["scores"] == [round(float(s), 6) for s in got]
        if len(set(scores.tolist())) == len(scores):  # no ties: exactly argsort
            order = [
                ITEMS[i] for i in np.argsort(-scores, kind="stable") if ITEMS[i] not in ex_.history
            ]
            assert part["items"] == order[:4]
        t = ex_.target
        assert part["target_rank"] == (part["items"].index(t) + 1 if t in part["items"] else None)
        assert part["popularity"] == [int(CAT.popularity[ITEMS.index(i)]) for i in part["items"]]
        assert part["target_popularity"] == int(CAT.popularity[ITEMS.index(t)])


# random is left out: its draws are seeded by the titles it is given, so a candidate list and
# the catalogue get different draws by design
@pytest.mark.parametrize(
    "scorer", [s for s in fitted() if s.name != "random"], ids=lambda s: s.name
)
def test_catalogue_scores_agree_with_candidate_scores(scorer) -> None:
    for e in TEST:
        assert scorer.score_titles(e.history, e.candidates).tolist() == scorer.score(e)


def test_top_n_items_excludes_and_breaks_ties_by_key() -> None:
    s = np.array([1.0, 3.0, 3.0, 2.0, np.nan])
    assert top_n_items(s, [], 5).tolist() == [1, 2, 3, 0, 4]
    assert top_n_items(s, [1], 2).tolist() == [2, 3]
    assert top_n_items(s, [], 2, tie_key=np.array([0, 9, 1, 0, 0])).tolist() == [2, 1]


def test_ties_are_broken_by_a_seeded_draw_not_catalogue_order() -> None:
    flat = [np.zeros(len(ITEMS))] * 1
    firsts = {
        all_item_records(TEST[:1], flat, CAT, 1, seed)[0][0]["all_item"]["items"][0]
        for seed in range(30)
    }
    assert len(firsts) > 2 and not {"i0", "i1"} & firsts
    a = all_item_records(TEST, [np.zeros(8)] * 3, CAT, 3, 7)[0]
    assert a == all_item_records(TEST, [np.zeros(8)] * 3, CAT, 3, 7)[0]


def _dump(path: Path, rows: list[Example]) -> Path:
    path.write_text(
        json.dumps(
            [
                {
                    "historyList": "::".join(r.history),
                    "itemList": list(r.candidates),
                    "trueSelection": r.target,
                }
                for r in rows
            ]
        )
    )
    return path


def test_cli_all_item_report_round_trips_through_sdpo_report(tmp_path: Path, capsys) -> None:
    train, test = _dump(tmp_path / "train.json", TRAIN), _dump(tmp_path / "valid.json", TEST)
    cat = write_catalogue(CAT, tmp_path / "catalogue.json")
    for name in ("most_popular", "item_knn"):
        assert (
            baseline_main(
                [
                    name,
                    "--train",
                    str(train),
                    "--test",
                    str(test),
                    "--no-select",
                    "--out",
                    str(tmp_path / name),
                    "--dataset",
                    "toy",
                    "-q",
                    "--protocol",
                    "all_item",
                    "--catalogue",
                    str(cat),
                    "--top_n",
                    "5",
                ]
            )
            == 0
        )
    s = json.loads((tmp_path / "item_knn/summary.json").read_text())
    assert s["protocol"] == "all_item" and set(s["protocols"]) == {"all_item"}
    assert s["catalogue"]["n_items"] == 8 and s["catalogue"]["top_n"] == 5
    assert s["catalogue"]["history_rule"] == "excluded"
    m = s["protocols"]["all_item"]
    assert {"hr@1", "hr@5", "ndcg@5", "mrr", "coverage@5", "popularity@5", "novelty@5"} <= set(m)
    assert "hr@10" not in m and "valid_ratio" not in m
    recs = read_predictions(tmp_path / "item_knn/predictions.jsonl")
    hits = [
        r["all_item"]["target_rank"] is not None and r["all_item"]["target_rank"] <= 5 for r in recs
    ]
    assert m["hr@5"]["value"] == pytest.approx(np.mean(hits))
    capsys.readouterr()
    assert (
        report_main(
            [
                str(tmp_path / "most_popular/summary.json"),
                str(tmp_path / "item_knn/summary.json"),
                "--protocol",
                "all_item",
                "--metrics",
                "hr@5,ndcg@5,coverage@5",
                "--baseline-last",
                "--n-boot",
                "100",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Most popular" in out and "Item-kNN (co-occurrence)" in out
    # without a catalogue, or with a target outside it: one error, exit 2
    assert (
        baseline_main(
            [
                "random",
                "--train",
                str(train),
                "--test",
                str(test),
                "--out",
                str(tmp_path / "x"),
                "--protocol",
                "all_item",
            ]
        )
        == 2
    )
    write_catalogue(Catalogue(ITEMS[:7]), tmp_path / "small.json")
    assert (
        baseline_main(
            [
                "random",
                "--train",
                str(train),
                "--test",
                str(test),
                "--out",
                str(tmp_path / "x"),
                "--protocol",
                "all_item",
                "--catalogue",
                str(tmp_path / "small.json"),
                "--top_n",
                "3",
            ]
        )
        == 2
    )
    assert "target 'i7' is not in the catalogue" in capsys.readouterr().err


def test_sequential_recommender_ranks_the_catalogue(tmp_path: Path) -> None:
    """SASRec with ``data.protocol all_item``: the report's top N is the argsort of the fitted
    model's logits over the catalogue, history excluded (scores written = the logits)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_baselines_seqrec import cycle_rows

    (tmp_path / "train.json").write_text(json.dumps(cycle_rows(64)))
    (tmp_path / "valid.json").write_text(json.dumps(cycle_rows(16, offset=3)))
    cat = write_catalogue(Catalogue(ITEMS, popularity=[8] * 8), tmp_path / "catalogue.json")
    assert (
        baseline_main(
            [
                "fit",
                "--seed_everything",
                "0",
                "--model=sdpo_lightning.baselines.sasrec.SASRec",
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
                "--data.protocol",
                "all_item",
                "--data.catalogue_file",
                str(cat),
                "--data.top_n",
                "4",
                "--trainer.max_epochs",
                "15",
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
                "--trainer.logger",
                "false",
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "run/summary.json").read_text())
    assert set(s["protocols"]) == {"all_item"} and s["catalogue"]["top_n"] == 4
    assert s["protocols"]["all_item"]["hr@1"]["value"] >= 0.9  # the cycle's next item
    (ckpt,) = (tmp_path / "run").rglob("*.ckpt")
    from sdpo_lightning.baselines.sasrec import SASRec
    from sdpo_lightning.baselines.seqrec_data import SeqRecDataModule, SeqRecDataset

    dm = SeqRecDataModule(str(tmp_path / "train.json"), str(tmp_path / "valid.json"), max_len=3)
    model = SASRec.load_from_checkpoint(ckpt, weights_only=False).eval()
    seq = torch.stack([row["seq"] for row in SeqRecDataset(dm.test_examples, dm.vocab, 3)])
    with torch.no_grad():
        logits = model.logits(seq)[:, dm.vocab.encode(ITEMS)].numpy()  # catalogue order
    for ex_, row, rec in zip(
        dm.test_examples, logits, read_predictions(tmp_path / "run/predictions.jsonl"), strict=True
    ):
        order = [ITEMS[i] for i in np.argsort(-row, kind="stable") if ITEMS[i] not in ex_.history]
        assert rec["all_item"]["items"] == order[:4]
        assert rec["all_item"]["scores"] == pytest.approx(
            sorted(row[[ITEMS.index(t) for t in order[:4]]], reverse=True), abs=1e-5
        )
