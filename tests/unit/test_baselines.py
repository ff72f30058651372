"""Non-neural baselines: hand-computed scores, ranks, tie-breaks, reports and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sdpo_lightning.baselines import (
    ItemKNNScorer,
    MostPopularScorer,
    RandomScorer,
    make_scorer,
    prediction_records,
    run_baseline,
)
from sdpo_lightning.baselines.base import user_chains
from sdpo_lightning.baselines.cli import main as baseline_main
from sdpo_lightning.baselines.selection import carve_selection_split, select_params, target_rank
from sdpo_lightning.data.records import Example
from sdpo_lightning.evaluation.metrics import rank_of_target
from sdpo_lightning.evaluation.report import comparison_table, load_summary, read_predictions


def ex(history: str, candidates: str, target: str) -> Example:
    return Example(
        history=tuple(history.split()), candidates=tuple(candidates.split()), target=target
    )


# r2 continues r1 (its history is r1's history + r1's target); r3 and r4 start new users.
TRAIN = [ex("A B", "C D", "C"), ex("A B C", "D A", "D"), ex("B", "C E", "C"), ex("E", "A B", "A")]


def test_user_chains_follow_sliding_windows() -> None:
    assert user_chains(TRAIN) == [[0, 1], [2], [3]]


def test_most_popular_counts_targets_and_ranks_ties_against_target() -> None:
    mp = MostPopularScorer().fit(TRAIN)  # C: 2, D: 1, A: 1
    test = ex("X", "D C A E", "A")
    assert mp.score(test) == [1.0, 2.0, 1.0, 0.0]
    (rec,) = prediction_records(mp, [test])
    assert rec["target_rank"] == 3  # C (2) and D (1, tied) count against A
    assert (rec["generated"], rec["parsed"], rec["valid"], rec["correct"]) == (
        "C",
        "C",
        True,
        False,
    )


def test_most_popular_with_first_history_counts() -> None:
    mp = MostPopularScorer(count_history=True).fit(TRAIN)  # + A, B (r1), B (r3), E (r4)
    assert mp.score(ex("X", "A B C D E F", "A")) == [2.0, 2.0, 2.0, 1.0, 1.0, 0.0]


def test_top_tie_break_is_seeded_and_fair() -> None:
    test = ex("X", "D A E", "A")  # D and A tie at 1
    picks = [
        prediction_records(MostPopularScorer(seed=s).fit(TRAIN), [test])[0]["generated"]
        for s in range(200)
    ]
    again = [
        prediction_records(MostPopularScorer(seed=s).fit(TRAIN), [test])[0]["generated"]
        for s in range(200)
    ]
    assert picks == again
    assert set(picks) == {"D", "A"}
    assert 0.35 < picks.count("A") / 200 < 0.65
    rec = prediction_records(MostPopularScorer(seed=0).fit(TRAIN), [test])[0]
    assert rec["target_rank"] == 2 and rec["n_tied_top"] == 2


def test_item_knn_recency_weighted_cooccurrence_plus_popularity() -> None:
    knn = ItemKNNScorer(window=2, decay=0.5, pop_weight=0.1).fit(TRAIN)
    # C[B][C]=2, C[B][D]=1, C[E][A]=1; history weights B: 1, E: 0.5
    got = knn.score(ex("E B", "C D A X", "A"))
    want = [2 + 0.1 * math.log1p(2), 1 + 0.1 * math.log1p(1), 0.5 + 0.1 * math.log1p(1), 0.0]
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    )


def test_item_knn_window_one_and_symmetric() -> None:
    one = ItemKNNScorer(window=1, decay=1.0, pop_weight=0.0).fit(TRAIN)  # B->C x2, C->D, E->A
    assert one.score(ex("A B", "C D", "C")) == [2.0, 0.0]  # A->C is outside window 1
    sym = ItemKNNScorer(window=2, symmetric=True, decay=1.0, pop_weight=0.1).fit(TRAIN)
    # reverse pairs from C: C->A (r1), C->B (r1, r3); plus C->D forward (r2)
    got = sym.score(ex("C", "A B D", "A"))
    want = [1 + 0.1 * math.log1p(1), 2.0, 1 + 0.1 * math.log1p(1)]
    torch.testing.assert_close(got, want)


def test_item_knn_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="decay"):
        ItemKNNScorer(decay=0.0)
    with pytest.raises(ValueError, match="window"):
        ItemKNNScorer(window=0)
    with pytest.raises(RuntimeError, match="before fit"):
        ItemKNNScorer().score(TRAIN[0])


def test_random_scores_are_seeded_by_content_and_near_chance() -> None:
    a, b = RandomScorer(seed=3).fit([]), RandomScorer(seed=4).fit([])
    e = ex("A B", "C D E F", "C")
    assert a.score(e) == RandomScorer(seed=3).fit([]).score(e)
    assert a.score(e) != b.score(e)
    assert all(0.0 <= s < 1.0 for s in a.score(e))
    many = [ex(f"h{i}", " ".join(f"c{i}_{j}" for j in range(20)), f"c{i}_0") for i in range(3000)]
    hr = sum(r["correct"] for r in prediction_records(a, many)) / len(many)
    assert abs(hr - 0.05) < 0.015


def test_target_rank_matches_rank_of_target() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 6), generator=g).double()  # many ties
    tgt = torch.randint(0, 6, (50,), generator=g)
    want = rank_of_target(scores, tgt).tolist()
    assert [
        target_rank(s, int(t)) for s, t in zip(scores.tolist(), tgt.tolist(), strict=False)
    ] == want


def test_selection_split_keeps_users_whole() -> None:
    rows = [ex(f"u{u}_0", "a b", "a") for u in range(10)]  # ten one-row users
    rows += [ex("x", "y z", "y"), ex("x y", "z w", "z")]  # one two-row user
    fit, sel = carve_selection_split(rows, fraction=0.3, seed=1)
    assert len(fit) + len(sel) == len(rows) and not set(map(id, fit)) & set(map(id, sel))
    assert (rows[10] in sel) == (rows[11] in sel)
    assert 3 <= len(sel) <= 4


def test_select_params_picks_the_best_point() -> None:
    rows = TRAIN * 3
    best, table = select_params(
        lambda **kw: make_scorer("item_knn", **kw),
        {"pop_weight": [0.0, 1.0], "window": [1, 2]},
        rows,
        0.5,
        0,
    )
    assert len(table) == 4
    key = max((r["hr@1"], r["mrr"]) for r in table)
    first = next(r for r in table if (r["hr@1"], r["mrr"]) == key)  # grid order breaks ties
    assert best == {"pop_weight": first["pop_weight"], "window": first["window"]}
    assert [(r["pop_weight"], r["window"]) for r in table] == [
        (0.0, 1),
        (0.0, 2),
        (1.0, 1),
        (1.0, 2),
    ]
    assert all(r["n_sel"] > 0 and r["n_fit"] > 0 for r in table)


def test_run_baseline_writes_a_report_sdpo_report_reads(tmp_path: Path) -> None:
    test = [ex("X", "D C A E", "A"), ex("B", "D C", "C"), ex("E", "C A", "A")]
    s = run_baseline("most_popular", TRAIN, test, tmp_path / "mp", seed=0, dataset="toy")
    # ranks: 3; C (2) beats D (1): 1; C (2) beats A (1): 2
    assert [r["target_rank"] for r in read_predictions(tmp_path / "mp/predictions.jsonl")] == [
        3,
        1,
        2,
    ]
    assert s["protocols"]["ranking"]["hr@1"]["value"] == pytest.approx(1 / 3)
    assert s["protocols"]["generation"]["hr@1"]["value"] == pytest.approx(1 / 3)
    assert s["protocols"]["generation"]["valid_ratio"]["value"] == 1.0
    assert s["method"] == "Most popular" and s["dataset"] == "toy"
    knn = run_baseline(
        "item_knn",
        TRAIN,
        test,
        tmp_path / "knn",
        seed=0,
        dataset="toy",
        select=False,
        window=1,
        decay=1.0,
        pop_weight=0.1,
    )
    # B->C: row 2 top is C; row 3 (E->A) top is A; row 1: no co-occurrence, popularity: C
    assert knn["protocols"]["generation"]["hr@1"]["value"] == pytest.approx(2 / 3)
    assert load_summary(tmp_path / "knn/summary.json")["config"]["window"] == 1
    table = comparison_table(
        [tmp_path / "mp/summary.json", tmp_path / "knn/summary.json"],
        baseline_last=True,
        n_boot=200,
    )
    assert "| Most popular | 0.3333 | 1.0000 | +100.00% (p=" in table


def test_run_baseline_selects_on_train_only(tmp_path: Path) -> None:
    rows = [ex(f"u{u} p", "q r", "q") for u in range(6)]
    s = run_baseline("item_knn", rows, rows[:2], tmp_path, seed=0, dataset="toy")
    assert s["selection"]["n_points"] == 72 and s["selection"]["chosen"].keys() == {
        "window",
        "symmetric",
        "decay",
        "pop_weight",
    }
    assert s["selection"]["best"]["n_fit"] + s["selection"]["best"]["n_sel"] == 6


def test_cli_end_to_end_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def dump(path: Path, rows: list[Example]) -> Path:
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

    train, test = dump(tmp_path / "train.json", TRAIN), dump(tmp_path / "valid.json", TRAIN[:2])
    assert (
        baseline_main(
            [
                "most_popular",
                "--train",
                str(train),
                "--test",
                str(test),
                "--out",
                str(tmp_path / "out"),
                "--dataset",
                "toy",
            ]
        )
        == 0
    )
    assert "Most popular on toy" in capsys.readouterr().out
    assert len(read_predictions(tmp_path / "out/predictions.jsonl")) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"historyList": "a", "itemList": ["b", "c"], "trueSelection": "z"}]))
    assert (
        baseline_main(
            ["random", "--train", str(bad), "--test", str(test), "--out", str(tmp_path / "o2")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.json, record 0: target 'z' is not among the 2 candidates" in err
    with pytest.raises(SystemExit):
        baseline_main(["nope", "--train", str(train), "--test", str(test), "--out", "x"])


def test_cli_help_lists_the_sequential_recommenders(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        baseline_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ("GRU4Rec", "Caser", "SASRec", "item_knn", "most_popular", "random"):
        assert name in text, name
    assert "sdpo-baseline {fit,validate,test} -c configs/baselines/" in text
    assert "configs/baselines/{gru4rec,caser,sasrec}_{lastfm,ml100k}.yaml" in text
