"""The study runners: `collect` joins a resumed fit's metrics logs into one curve; a stage
stopped part-way and resumed counts every start's wall time."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks" / "quality"))
import lastfm_study  # noqa: E402
from run import Runner  # noqa: E402


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_resumed_fit_is_one_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """First start: steps 9, 19, 29 and a validation at step 19 (logged as 19, i.e. after 20
    steps); killed after step 29, resumed from the step-20 checkpoint: the second log redoes
    29 and goes on to 39 with a validation at 39; then the test logs its own version.
    Expected: training rows 9, 19, 29, 39 with the redone 29 from the resume, and a
    learning curve of two points (20 and 40 steps, 80 and 160 examples at batch size 4)."""
    run = tmp_path / "run"
    _write(
        run / "csv" / "version_0" / "metrics.csv",
        [
            {"epoch": 0, "step": 9, "train/loss": 3.0},
            {"epoch": 0, "step": 19, "train/loss": 2.5},
            {"epoch": 0, "step": 19, "val/loss": 2.8, "val/rank/hr@1": 0.1},
            {"epoch": 0, "step": 29, "train/loss": 2.2},  # lost: redone after the resume
        ],
    )
    _write(
        run / "csv" / "version_1" / "metrics.csv",
        [
            {"epoch": 0, "step": 29, "train/loss": 2.1, "train/hybrid_probability": 0.7},
            {"epoch": 0, "step": 39, "train/loss": 2.0, "train/hybrid_probability": 0.9},
            {"epoch": 0, "step": 39, "val/loss": 2.4, "val/rank/hr@1": 0.3},
        ],
    )
    _write(run / "csv" / "version_2" / "metrics.csv", [{"test/gen/hr@1": 0.25}])
    monkeypatch.setattr(lastfm_study, "RESULTS", tmp_path / "results")

    lastfm_study.collect(run, "demo")

    dest = tmp_path / "results" / "demo"
    fit = list(csv.DictReader((dest / "fit_metrics.csv").open()))
    assert [(r["step"], r["train/loss"]) for r in fit if r["train/loss"]] == [
        ("9", "3.0"),
        ("19", "2.5"),
        ("29", "2.1"),
        ("39", "2.0"),
    ]
    assert "train/hybrid_probability" in fit[0]
    curve = list(csv.DictReader((dest / "learning_curve.csv").open()))
    assert [(r["step"], r["examples_seen"], r["val_rank_hr@1"]) for r in curve] == [
        ("20", "80", "0.1"),
        ("40", "160", "0.3"),
    ]
    assert list(csv.DictReader((dest / "metrics.csv").open())) == [{"test/gen/hr@1": "0.25"}]


def test_single_fit_log_is_copied_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    rows = [
        {"epoch": 0, "step": 9, "train/loss": 1.5},
        {"epoch": 0, "step": 9, "val/rank/hr@1": 0.2},
    ]
    _write(run / "csv" / "version_0" / "metrics.csv", rows)
    _write(run / "csv" / "version_1" / "metrics.csv", [{"test/gen/hr@1": 0.5}])
    monkeypatch.setattr(lastfm_study, "RESULTS", tmp_path / "results")

    lastfm_study.collect(run, "one")

    assert (tmp_path / "results" / "one" / "fit_metrics.csv").read_bytes() == (
        run / "csv" / "version_0" / "metrics.csv"
    ).read_bytes()


def test_collect_commits_compact_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The predictions go into the results as ``predictions.jsonl.gz`` without the prompt and
    target (an older full copy is removed); the run directory keeps its full file."""
    from sdpo_lightning.evaluation.report import hits_by_index, read_predictions

    run = tmp_path / "run"
    full = [
        {
            "index": i,
            "target": "a",
            "prompt": "p",
            "generated": " a",
            "parsed": "a",
            "valid": True,
            "correct": i == 0,
            "target_rank": 1 + i,
            "top_item": "a",
            "scores": [0.5, -1.0],
        }
        for i in range(2)
    ]
    run.mkdir()
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))
    monkeypatch.setattr(lastfm_study, "RESULTS", tmp_path / "results")
    dest = tmp_path / "results" / "one"
    dest.mkdir(parents=True)
    (dest / "predictions.jsonl").write_text("stale")

    lastfm_study.collect(run, "one")

    assert not (dest / "predictions.jsonl").exists() and (run / "predictions.jsonl").is_file()
    assert read_predictions(dest / "predictions.jsonl.gz") == [
        {k: v for k, v in r.items() if k not in ("target", "prompt")} for r in full
    ]
    assert lastfm_study.has_predictions("one")
    assert hits_by_index(dest / "predictions.jsonl") == hits_by_index(run / "predictions.jsonl")


def test_resumed_stage_counts_every_start(tmp_path: Path) -> None:
    """A first start ran 100 s before it was stopped (``started/<name>`` holds 100.0); the
    second start finishes: the stage's time is 100 s plus the second start's."""
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "s").write_text("100.0")
    runner = Runner(tmp_path, tick=0.01)
    runner.stage("s", ["-n", "1", "-r", "1", "import time; time.sleep(0.05)"], module="timeit")
    assert 100.05 <= runner.timings["s"] < 130
    assert (tmp_path / "done" / "s").exists()
    assert json.loads((tmp_path / "timings.json").read_text())["s"] == runner.timings["s"]


def test_other_runners_newer_times_are_kept(tmp_path: Path) -> None:
    """Runner A starts when ``timings.json`` holds an old ``b`` (5 s); runner B then reruns
    ``b`` (7 s) and writes it. A's own stage must not put the old 5 s back, in the work
    directory or in the results file that save_timings merges into (which gets A's stage only)."""
    (tmp_path / "timings.json").write_text(json.dumps({"b": 5.0}))
    a = Runner(tmp_path, tick=0.01)
    (tmp_path / "timings.json").write_text(json.dumps({"b": 7.0}))  # runner B's rerun
    a.stage("s", ["-n", "1", "-r", "1", "pass"], module="timeit")
    assert json.loads((tmp_path / "timings.json").read_text()) == {"b": 7.0, "s": a.ran["s"]}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"b": 7.0}))
    lastfm_study.save_timings(a, results)
    assert json.loads(results.read_text()) == {"b": 7.0, "s": a.ran["s"]}


def test_failed_start_keeps_its_time(tmp_path: Path) -> None:
    runner = Runner(tmp_path, tick=0.01)
    with pytest.raises(SystemExit, match="stage bad failed"):
        runner.stage("bad", [str(tmp_path / "missing.json")], module="json.tool")
    assert float((tmp_path / "started" / "bad").read_text()) > 0
    assert not (tmp_path / "done" / "bad").exists()


def test_pooled_effect_of_several_pairs() -> None:
    """Two (run, control) pairs, generation hits on rows 0-3 (row 4 only in the first pair,
    so it is left out): pair 1 run 1,0,1,0 vs control 0,0,1,0 → d = 1,0,0,0; pair 2 run
    0,0,1,1 vs control 0,1,1,0 → d = 0,-1,0,1. Per row, mean run minus mean control =
    0.5, -0.5, 0, 0.5, whose mean is 0.125. One pair's detectable difference is 2.8 sd(d)/√4:
    pair 1 sd 0.5 → 0.7, pair 2 sd √(2/3) → 1.1431; the median of the two is 0.92155."""
    h = lambda *v: {i: (bool(x), False) for i, x in enumerate(v)}  # noqa: E731
    pairs = [(h(1, 0, 1, 0, 1), h(0, 0, 1, 0, 0)), (h(0, 0, 1, 1), h(0, 1, 1, 0))]
    rows, delta, lo, hi, mde = lastfm_study.pooled(pairs, protocol=0)
    assert rows == 4
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(delta, 0.125)
    torch.testing.assert_close(mde, (0.7 + 2.8 * (2 / 3) ** 0.5 / 2) / 2)
    assert lo <= delta <= hi
    assert lastfm_study.pooled(pairs, protocol=1)[1:4] == (0.0, 0.0, 0.0)  # no ranking hits at all


def test_control_of_each_alignment_run() -> None:
    """Each run's "SFT continued" control (same rows, epochs and lr); SFT runs and the
    controls themselves have none."""
    assert lastfm_study._control_of("sft_e6.sdpo_k3") == "sft_e6.sft_cont"
    assert lastfm_study._control_of("sft_e6.sdpo_k3_lr5e-4_sel") == "sft_e6.sft_cont_lr5e-4_sel"
    assert lastfm_study._control_of("sft_e6.sdpo_k19_e2_nll_sel") == "sft_e6.sft_cont_e2_sel"
    assert lastfm_study._control_of("sft_e6.sdpo_k19_ep4") == "sft_e6"
    assert lastfm_study._control_of("sft_e6.sft_cont") is None
    assert lastfm_study._control_of("sft_e6") is None


def test_ml100k_split_keeps_users_apart(tmp_path: Path) -> None:
    """The MovieLens study's split: SFT rows come from 80% of the training users, alignment
    and validation rows from the other 20% (no user on both sides, no row twice), test rows
    from valid.json; the same seed writes the same files."""
    import ml100k_study

    full = tmp_path / "ml100k_full"
    full.mkdir()

    def row(u, t):
        return {
            "historyList": ["A"],
            "itemList": [f"T{t}", "B"],
            "trueSelection": f"T{t}",
            "user_id": str(u),
        }  # noqa: E731

    train = [row(u, t) for u in range(1, 21) for t in range(10)]  # 20 users, 10 rows each
    (full / "train.json").write_text(json.dumps(train))
    (full / "valid.json").write_text(json.dumps([row(100 + i, i) for i in range(30)]))
    (full / "test.json").write_text(
        json.dumps([row(200 + i // 3, i) for i in range(30)])
    )  # 10 users
    paths = ml100k_study.split(
        tmp_path, seed=1, sft_rows=50, align_rows=20, test_rows=12, val_rows=5
    )
    load = lambda k: json.loads(paths[k].read_text())  # noqa: E731
    sft, align, val, test = load("sft"), load("align"), load("val"), load("test")
    assert (len(sft), len(align), len(val), len(test)) == (50, 20, 5, 12)
    assert {r["user_id"] for r in sft}.isdisjoint({r["user_id"] for r in align + val})
    assert len({(r["user_id"], r["trueSelection"]) for r in align + val}) == 25
    assert all(int(r["user_id"]) >= 100 for r in test)
    assert load("lm_rows") == sft + align and len(load("train_full")) == 200
    assert (
        len(load("confirm1")) + len(load("confirm2")) == 30
    )  # per_user 21 ≥ 3: every test.json row
    before = {k: p.read_text() for k, p in paths.items()}
    again = ml100k_study.split(
        tmp_path, seed=1, sft_rows=50, align_rows=20, test_rows=12, val_rows=5
    )
    assert {k: p.read_text() for k, p in again.items()} == before


def test_ml100k_confirmation_rows() -> None:
    """The confirmation rows: at most ``per_user`` rows of each user (all of a user with
    fewer), file order kept, users in two disjoint halves, the same rows for the same seed."""
    import ml100k_study

    test = [{"user_id": str(u), "i": i} for u in range(1, 8) for i in range(u)]  # user u has u rows
    halves = ml100k_study.confirm_rows(test, seed=1, per_user=3)
    rows = halves["confirm1"] + halves["confirm2"]
    users = [{r["user_id"] for r in halves[h]} for h in ("confirm1", "confirm2")]
    assert users[0].isdisjoint(users[1]) and users[0] | users[1] == {str(u) for u in range(1, 8)}
    assert sorted((len(users[0]), len(users[1]))) == [3, 4]
    per_user = {u: sum(r["user_id"] == u for r in rows) for u in users[0] | users[1]}
    assert per_user == {str(u): min(u, 3) for u in range(1, 8)}
    for h in halves.values():
        assert h == sorted(h, key=test.index)
    assert ml100k_study.confirm_rows(test, seed=1, per_user=3) == halves


def test_ml100k_user_table_pools_parts_by_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two test files: ``test`` (rows of users 1, 1, 2) and ``confirm1`` (one row of user 1).
    Generation hits of S-DPO 1,1,0 | 1 and of its control 0,1,0 | 0 give differences
    1,0,0 | 1: mean 0.5 over 4 rows. A user of one file is not the same cluster as a user of
    the same id in the other (different user splits), so there are 3 users. Every ranking hit
    is a miss for both (target rank 2): difference 0 with a zero-width interval."""
    import ml100k_study

    def write(part_dir: Path, name: str, gen: list[int]) -> None:
        (part_dir / name).mkdir(parents=True)
        (part_dir / name / "predictions.jsonl").write_text(
            "".join(
                json.dumps({"index": i, "correct": bool(g), "target_rank": 2}) + "\n"
                for i, g in enumerate(gen)
            )
        )

    results = tmp_path / "results"
    for module in (ml100k_study, lastfm_study):
        monkeypatch.setattr(module, "RESULTS", results)
    lastfm_study._hits.cache_clear()
    ml100k_study._users.cache_clear()
    (results / "ml100k" / "users").mkdir(parents=True)
    (results / "ml100k" / "users" / "test.json").write_text(json.dumps(["1", "1", "2"]))
    (results / "ml100k" / "users" / "confirm1.json").write_text(json.dumps(["1"]))
    write(results / "ml100k", "sdpo_k3", [1, 1, 0])
    write(results / "ml100k", "sft_cont", [0, 1, 0])
    write(results / "ml100k" / "confirm1", "sdpo_k3", [1])
    write(results / "ml100k" / "confirm1", "sft_cont", [0])

    out = ml100k_study.user_table(
        ["test", "confirm1"], [("sdpo_k3", "sft_cont"), ("sdpo_k3", "sft")]
    )

    lines = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(lines) == 1  # the pair without an sft run is left out
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[:4] == ["`sdpo_k3`", "`sft_cont`", "3", "4"]
    assert cells[4].startswith("+0.5000 [") and cells[5].startswith("+0.5000 [")
    assert cells[6] == cells[7] == "+0.0000 [+0.0000, +0.0000]"
    lastfm_study._hits.cache_clear()
    ml100k_study._users.cache_clear()


def test_all_item_lastfm_users_chain_sliding_windows() -> None:
    """LastFM rows carry no user id: a row continues the previous one's user iff its history is
    the previous history plus the previous target (last len(history) items). Rows 0-2 are one
    user's windows (length 2, then sliding), row 3 restarts (history not the continuation), row
    4 continues row 3; a repeated history with a different target is a new user."""
    import all_item_study

    rows = [
        {"historyList": ["a", "b"], "trueSelection": "c"},
        {"historyList": ["b", "c"], "trueSelection": "d"},
        {"historyList": "c::d", "trueSelection": "e"},  # the string form of the public files
        {"historyList": ["x", "y"], "trueSelection": "z"},
        {"historyList": ["x", "y", "z"], "trueSelection": "w"},  # a growing window
        {"historyList": ["x", "y", "z"], "trueSelection": "v"},
    ]
    assert all_item_study.lastfm_users(rows) == [0, 0, 0, 1, 1, 2]


def test_all_item_primary_comparison_is_registered() -> None:
    """The registered primary comparison names the study's own arms and metric, and the runner
    fits its two arms before any other alignment arm (their tests come first)."""
    import all_item_study

    names = [a[0] for a in all_item_study.ARMS]
    assert all_item_study.PRIMARY["control"] == names[0] == "sft_cont"
    assert all_item_study.PRIMARY["treatment"] == names[1] == "sdpo_onpolicy"
    assert all_item_study.PRIMARY["metric"] == "hr@10"
    arms = dict((a[0], a[2:]) for a in all_item_study.ARMS + all_item_study.SUCCESSORS)
    assert arms["sdpo_onpolicy"] == ("sdpo", 3, "on_policy_beam")
    assert all(
        neg == "on_policy_beam" for _, _, neg in (arms[s[0]] for s in all_item_study.SUCCESSORS)
    )


def test_all_item_ml100k_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MovieLens-100K split of the all-item study: SFT and alignment rows from disjoint
    training users, test rows from valid.json with their users recorded by index (the table's
    bootstrap over users), the same files for the same seed."""
    import all_item_study

    monkeypatch.setattr(all_item_study, "RESULTS", tmp_path / "results")
    full = tmp_path / "ml100k_full"
    full.mkdir()

    def row(u: int, t: int) -> dict:
        return {
            "historyList": ["A"],
            "itemList": [f"T{t}"],
            "trueSelection": f"T{t}",
            "user_id": str(u),
        }

    (full / "catalogue.json").write_text(json.dumps([f"T{t}" for t in range(40)] + ["A"]))
    (full / "train.json").write_text(
        json.dumps([row(u, t) for u in range(1, 21) for t in range(10)])
    )
    (full / "valid.json").write_text(json.dumps([row(100 + i // 3, i) for i in range(30)]))
    paths, catalogue, users = all_item_study.split("ml100k", tmp_path, 1, 50, 20, 12)
    load = lambda k: json.loads(paths[k].read_text())  # noqa: E731
    sft, align, test = load("sft"), load("align"), load("test")
    assert (len(sft), len(align), len(test)) == (50, 20, 12)
    assert catalogue == full / "catalogue.json"
    assert {r["user_id"] for r in sft}.isdisjoint({r["user_id"] for r in align})
    assert load("val") == align[:64] and load("lm_rows") == sft + align
    assert users == [r["user_id"] for r in test]
    assert json.loads((tmp_path / "results" / "ml100k" / "test_users.json").read_text()) == users
    before = {k: p.read_text() for k, p in paths.items()}
    again, _, _ = all_item_study.split("ml100k", tmp_path, 1, 50, 20, 12)
    assert {k: p.read_text() for k, p in again.items()} == before
