"""A second real data set: S-DPO against SFT with SmolLM2-135M on MovieLens-100K, on CPU.

LastFM's 650 test rows cannot separate S-DPO from SFT (README, "Quality on LastFM"): half of
their targets never occur in training. MovieLens-100K has 1682 items and 77k training rows,
so every test target is known, and its 10,561-row ``valid.json`` allows a larger test sample.
Same model, LoRA layers, trunk cache and learning rates as the LastFM study; the design is
its "unseen rows" one, with more rows:

1. ``prepare``: ``sdpo-prepare movielens-100k`` from ``../shared/data/ml-100k`` (seed 42,
   users split 80/10/10, 20 candidates: the target and 19 random items), then a seeded split
   of the **training users**: 80 % give the SFT rows (``--sft-rows`` sampled), the other 20 %
   the alignment rows (``--align-rows``) and 100 validation rows; the test rows are a seeded
   ``--test-rows`` (650) sample of ``valid.json`` (its own users, unseen by every model);
2. ``fit_sft`` (``configs/movielens/smollm2/sft.yaml``: two epochs, lr 1e-3, validation on
   the 100 rows every 125 steps: the learning curve) and its test;
3. from that adapter, one epoch over the alignment rows — users SFT never saw — at the SFT's
   final learning rate (1e-4), each the same rows and steps: SFT continued (the control),
   S-DPO K=3 (the paper's), S-DPO K=19 (every other candidate a negative; not run yet). Fixed in advance;
   no run is selected on the test rows;
4. baselines on the same test rows: random, most popular and item-kNN fitted on the full
   ``train.json`` (every training user) and on the LM's own rows (SFT + alignment rows);
5. ``--confirm``: a confirmation on new users, fixed (2026-12-06, before any of its rows was
   scored) after the 650 rows gave S-DPO K=3 +0.011 [-0.002, +0.023] over its control: the
   same three adapters, unchanged, tested on ``test.json`` — the 94 users of the prepared
   test split, whom no model and no earlier test row saw — ``--confirm-per-user`` (21) seeded
   rows of each user (all of a user with fewer), users split in two seeded halves
   (``confirm1`` / ``confirm2``, one runner each). Primary analysis: S-DPO K=3 minus SFT
   continued, generation and ranking HR@1, on both halves together, with a 95% interval
   from a bootstrap over **users** (rows of one user share history windows, so rows are not
   independent); the row bootstrap is printed beside it. The K=19 adapter, fitted after
   this was fixed, is tested on the same rows when its fit is done (a secondary row).

Results go to ``benchmarks/quality/results/ml100k/<run>/`` (``summary.json``, compact
``predictions.jsonl.gz``, metrics CSVs) and stage times to ``results/ml100k/timings.json``;
work files stay in ``--out``. Every stage is resumable and runners may share ``--out``:

    python benchmarks/quality/ml100k_study.py --out ../sdpo_ml100k --eval-trunk
    python benchmarks/quality/ml100k_study.py --table
    python benchmarks/quality/ml100k_study.py --out ../sdpo_ml100k --confirm 1   # and --confirm 2
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lastfm_study import (  # noqa: E402
    _deltas,
    _hits,
    collect,
    detail_table,
    has_predictions,
    save_timings,
)
from run import GGUF, REPO, SHARED, Runner, write_rows  # noqa: E402

RAW = SHARED / "data" / "ml-100k"
RESULTS = REPO / "benchmarks" / "quality" / "results"
PREFIX = "ml100k"  # results/ml100k/<run>
SFT_CFG, ALIGN_CFG = "configs/movielens/smollm2/sft.yaml", "configs/movielens/smollm2/sdpo.yaml"

#: (run name, method label, objective, K): one epoch over the alignment rows at lr 1e-4
ALIGN: list[tuple[str, str, str, int]] = [
    ("sft_cont", "SFT (continued)", "sft", 3),
    ("sdpo_k3", "S-DPO (K=3)", "sdpo", 3),
    ("sdpo_k19", "S-DPO (K=19)", "sdpo", 19),
]
#: (row, row it is compared with): the paired differences ``--table`` prints
PAIRS = [
    ("sdpo_k3", "sft_cont"),
    ("sdpo_k19", "sft_cont"),
    ("sdpo_k3", "sft"),
    ("sdpo_k19", "sft"),
    ("sft_cont", "sft"),
    ("sft", "baselines/most_popular_lm_rows"),
    ("sft", "baselines/most_popular"),
]
BASELINES = ("random", "most_popular", "item_knn")
#: each baseline fitted on all of train.json and on the LM's rows (results/ml100k[/<half>]/<name>)
BASELINE_RUNS = [f"baselines/{b}{s}" for s in ("", "_lm_rows") for b in BASELINES]


def confirm_rows(test: list[dict], seed: int, per_user: int) -> dict[str, list[dict]]:
    """The confirmation rows (module doc, step 5): ``per_user`` seeded rows of every user of
    ``test`` (all of a user with fewer), in file order, users split in two seeded halves."""
    rng = random.Random(f"confirm-{seed}")  # its own stream: the other files do not move
    by_user: dict[str, list[int]] = {}
    for i, r in enumerate(test):
        by_user.setdefault(r["user_id"], []).append(i)
    users = sorted(by_user, key=int)
    rng.shuffle(users)
    keep = {
        u: rng.sample(by_user[u], min(per_user, len(by_user[u]))) for u in sorted(by_user, key=int)
    }
    halves = (users[: len(users) // 2], users[len(users) // 2 :])
    return {
        f"confirm{h + 1}": [test[i] for i in sorted(i for u in half for i in keep[u])]
        for h, half in enumerate(halves)
    }


def split(
    out: Path,
    seed: int,
    sft_rows: int,
    align_rows: int,
    test_rows: int,
    val_rows: int = 100,
    per_user: int = 21,
) -> dict[str, Path]:
    """Write the study's files under ``out/ml100k`` (seeded; by training user, see the module doc)."""
    full = out / "ml100k_full"
    if not (full / "valid.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "sdpo_lightning.data.prepare",
                "movielens-100k",
                "--raw",
                str(RAW),
                "--out",
                str(full),
                "-q",
            ],
            check=True,
            cwd=REPO,
        )
    train = json.loads((full / "train.json").read_text())
    valid = json.loads((full / "valid.json").read_text())
    rng = random.Random(seed)
    users = sorted({r["user_id"] for r in train}, key=int)
    rng.shuffle(users)
    sft_users = set(users[: round(0.8 * len(users))])
    sft_pool = [r for r in train if r["user_id"] in sft_users]
    rest = [r for r in train if r["user_id"] not in sft_users]
    held = rng.sample(rest, align_rows + val_rows)
    files = {
        "sft": rng.sample(sft_pool, sft_rows),
        "align": held[:align_rows],
        "val": held[align_rows:],
        "test": [valid[i] for i in sorted(rng.sample(range(len(valid)), test_rows))],
        "train_full": train,
    }
    files["lm_rows"] = files["sft"] + files["align"]
    if not (full / "test.json").is_file():  # the confirmation rows' source (sdpo-prepare writes it)
        raise SystemExit(f"{full / 'test.json'}: missing; remove {full} to prepare the data again")
    files |= confirm_rows(json.loads((full / "test.json").read_text()), seed, per_user)
    paths = write_rows(
        out / "ml100k", files
    )  # the directory name is the dataset column of the report
    counts = {k: len(v) for k, v in files.items()} | {
        "sft_users": len(sft_users),
        "other_users": len(users) - len(sft_users),
    }
    (out / "split.json").write_text(json.dumps(counts))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO.parent / "sdpo_ml100k",
        help="work directory (outside the repo)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sft-rows", type=int, default=2000)
    p.add_argument("--align-rows", type=int, default=500)
    p.add_argument(
        "--test-rows",
        type=int,
        default=650,
        help="seeded sample of valid.json (LastFM's test size)",
    )
    p.add_argument(
        "--only", nargs="*", help="stages' run names (baselines, sft, sft_cont, sdpo_k3, ...)"
    )
    p.add_argument("--stage-args", default="", help="extra arguments for every sdpo stage")
    p.add_argument(
        "--eval-trunk",
        action="store_true",
        help="as in lastfm_study.py (model.scoring.eval_trunk_dir)",
    )
    p.add_argument(
        "--fits-only",
        action="store_true",
        help="run the fit stages only (a second runner's share while the first test persists the eval trunk)",
    )
    p.add_argument(
        "--confirm",
        type=int,
        choices=(1, 2),
        help="only the baselines and the SFT continued, S-DPO K=3, SFT (and, once fitted, S-DPO K=19) "
        "adapters on this half of the confirmation rows",
    )
    p.add_argument(
        "--confirm-per-user", type=int, default=21, help="confirmation rows per test.json user"
    )
    p.add_argument(
        "--table", action="store_true", help="only print the rows and their paired differences"
    )
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    if a.table:
        print(table())
        return 0
    if not GGUF.is_file() or not (RAW / "u.data").is_file():
        print(f"the study needs {GGUF} and {RAW}/u.data", file=sys.stderr)
        return 2
    out = a.out.resolve()
    files = split(out, a.seed, a.sft_rows, a.align_rows, a.test_rows, per_user=a.confirm_per_user)
    if not a.dry_run:  # each test row's user, by index: the table's bootstrap over users
        write_rows(
            RESULTS / PREFIX / "users",
            {
                k: [r["user_id"] for r in json.loads(files[k].read_text())]
                for k in ("test", "confirm1", "confirm2")
            },
        )
    run, runs = Runner(out, a.dry_run), out / "runs"
    done = lambda stage: a.dry_run or (out / "done" / stage).exists()  # noqa: E731
    wanted = lambda name: not a.only or name in a.only  # noqa: E731
    data = [
        "--data.val_file",
        str(files["val"]),
        *shlex.split(a.stage_args),
    ]  # + the stage's --data.test_file
    trunk = ["--model.scoring.eval_trunk_dir", str(out / "eval_trunk")] if a.eval_trunk else []

    def baselines(part: str = "test") -> None:
        """The baselines on a test file (``test`` or a confirmation half), each fitted twice."""
        from sdpo_lightning.evaluation.compact_predictions import compact_file

        at = "" if part == "test" else f"@{part}"
        for b in BASELINES:
            for train, suffix in ((files["train_full"], ""), (files["lm_rows"], "_lm_rows")):
                dest = RESULTS / _part_dir(part) / "baselines" / f"{b}{suffix}"
                run.stage(
                    f"fit_{b}{suffix}{at}",
                    [
                        b,
                        "--train",
                        str(train),
                        "--test",
                        str(files[part]),
                        "--out",
                        str(dest),
                        "--seed",
                        "0",
                        "-q",
                        "--dataset",
                        "ml100k",
                    ],
                    module="sdpo_lightning.baselines",
                )
                if not a.dry_run and (dest / "predictions.jsonl").is_file():  # committed compact
                    compact_file(dest / "predictions.jsonl")

    def test(name: str, cfg: str, method: str, part: str = "test") -> None:
        """Test the adapter of ``runs/<name>`` on a test file (``test`` or a confirmation half,
        which keeps its own run directory and lower-layer file)."""
        if part == "test":
            stage, root, lower = f"test_{name}", runs / name, trunk
        else:
            stage, root = f"test_{name}@{part}", runs / part / name
            lower = ["--model.scoring.eval_trunk_dir", str(out / f"eval_trunk_{part}")]
        run.stage(
            stage,
            [
                "test",
                "-c",
                cfg,
                *data,
                "--data.test_file",
                str(files[part]),
                "--trainer.default_root_dir",
                str(root),
                "--model.source.init_adapter",
                str(runs / name / "export"),
                "--model.output.method",
                method,
                "--model.output.run_name",
                name,
                *lower,
            ],
        )
        if not a.dry_run and done(stage):
            collect(root, f"{_part_dir(part)}/{name}")

    if a.confirm:  # step 5: the fixed adapters on new users; each half has its own trunk file
        half = f"confirm{a.confirm}"
        if wanted("baselines"):
            baselines(half)
        for name, cfg, method in (
            ("sft_cont", ALIGN_CFG, "SFT (continued)"),
            ("sdpo_k3", ALIGN_CFG, "S-DPO (K=3)"),
            ("sft", SFT_CFG, "SFT"),
            ("sdpo_k19", ALIGN_CFG, "S-DPO (K=19)"),
        ):
            if not wanted(name) or (
                name == "sdpo_k19" and not done("fit_sdpo_k19")
            ):  # K=19: a later, optional row
                continue
            if not done(f"fit_{name}"):
                raise SystemExit(f"--confirm needs the fitted {name} adapter (stage fit_{name})")
            test(name, cfg, method, half)
        if not a.dry_run:
            save_timings(run, RESULTS / PREFIX / "timings.json")
        return 0

    if wanted("baselines"):
        baselines()

    if wanted("sft"):
        run.stage(
            "fit_sft",
            [
                "fit",
                "-c",
                SFT_CFG,
                *data,
                "--data.test_file",
                str(files["test"]),
                "--data.train_file",
                str(files["sft"]),
                "--trainer.default_root_dir",
                str(runs / "sft"),
            ],
        )
        if done("fit_sft") and not a.fits_only:
            test("sft", SFT_CFG, "SFT")
    for name, method, objective, k in ALIGN:
        if not wanted(name) or not done("fit_sft"):
            continue
        run.stage(
            f"fit_{name}",
            [
                "fit",
                "-c",
                ALIGN_CFG,
                *data,
                "--data.test_file",
                str(files["test"]),
                "--data.train_file",
                str(files["align"]),
                "--trainer.default_root_dir",
                str(runs / name),
                "--model.source.init_adapter",
                str(runs / "sft" / "export"),
                "--model.objective.name",
                objective,
                "--model.objective.num_negatives",
                str(k),
                "--model.scoring.reference_cache_dir",
                str(out / "reference_cache" / name),
            ],
        )
        if done(f"fit_{name}") and not a.fits_only:
            test(name, ALIGN_CFG, method)
    if not a.dry_run:
        save_timings(run, RESULTS / PREFIX / "timings.json")
    return 0


def table() -> str:
    """Every collected row (both protocols, intervals, wall times) and the paired differences."""
    names = BASELINE_RUNS + ["sft"] + [n for n, *_ in ALIGN]
    have = [n for n in names if (RESULTS / PREFIX / n / "summary.json").is_file()]
    lines = [
        detail_table([f"{PREFIX}/{n}" for n in have], _timings()),
        "",
        "| row | minus | rows | gen HR@1 Δ [95% CI] | rank HR@1 Δ [95% CI] |",
        "|:---|:---|---:|---:|---:|",
    ]
    for mine, other in PAIRS:
        if mine in have and other in have:
            n, cells = _deltas(_hits(f"{PREFIX}/{mine}"), _hits(f"{PREFIX}/{other}"))
            lines.append(f"| `{mine}` | `{other}` | {n} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines + ["", user_table(["test"]), "", confirm_table()])


def _timings() -> dict[str, float]:
    """Stage times by the table's names: fit_<run> / fit_<baseline>[@<half>] (the runner's stage
    names) → fit_ml100k/[<half>/]<run> / fit_ml100k/[<half>/]baselines/<baseline>."""
    path = RESULTS / PREFIX / "timings.json"
    timings = {}
    for key, secs in (json.loads(path.read_text()) if path.is_file() else {}).items():
        stage, _, run = key.partition("_")
        run, _, half = run.partition("@")
        run = f"baselines/{run}" if run.removesuffix("_lm_rows") in BASELINES else run
        timings[f"{stage}_{PREFIX}/{half + '/' if half else ''}{run}"] = secs
    return timings


def _part_dir(part: str) -> str:
    """Results directory (under results/) of a test file's rows: ``test`` → ml100k, a half → ml100k/<half>."""
    return PREFIX if part == "test" else f"{PREFIX}/{part}"


@functools.cache
def _users(part: str) -> list[str]:
    return json.loads((RESULTS / PREFIX / "users" / f"{part}.json").read_text())


def user_table(parts: list[str], pairs: list[tuple[str, str]] = PAIRS[:5]) -> str:
    """Paired differences pooled over the test files ``parts`` (``test``: results/ml100k/<run>,
    ``confirm1``: results/ml100k/confirm1/<run>, ...), each with a 95% interval from a
    bootstrap over users (10,000 resamples, seed 0) and one over rows."""
    from sdpo_lightning.evaluation.bootstrap import bootstrap_ci, cluster_bootstrap_ci

    where = {
        "test": "the 650 valid.json rows",
        "confirm1": "confirmation half 1",
        "confirm2": "confirmation half 2",
    }
    lines = [
        f"Paired differences on {' + '.join(where[p] for p in parts)}: 95% intervals over users and over rows",
        "",
        "| row | minus | users | rows | gen Δ [users] | gen Δ [rows] | rank Δ [users] | rank Δ [rows] |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for mine, other in pairs:
        if not all(has_predictions(f"{_part_dir(p)}/{n}") for p in parts for n in (mine, other)):
            continue
        diffs: list[tuple[float, float]] = []
        users: list[str] = []
        for part in parts:
            a, b, who = (
                _hits(f"{_part_dir(part)}/{mine}"),
                _hits(f"{_part_dir(part)}/{other}"),
                _users(part),
            )
            for i in sorted(set(a) & set(b)):
                diffs.append((a[i][0] - b[i][0], a[i][1] - b[i][1]))
                users.append(f"{part}/{who[i]}")
        cells = []
        for j in (0, 1):  # generation, ranking
            d = [x[j] for x in diffs]
            for mean, lo, hi in (
                cluster_bootstrap_ci(d, users, n_boot=10_000, seed=0),  # over users
                bootstrap_ci(d, n_boot=10_000, seed=0),
            ):  # over rows
                cells.append(f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        lines.append(
            f"| `{mine}` | `{other}` | {len(set(users))} | {len(diffs)} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def confirm_table() -> str:
    """The confirmation on new users (module doc, step 5): each half's rows, then the paired
    differences on both halves together (the first line is the primary analysis)."""
    halves = [
        h
        for h in ("confirm1", "confirm2")
        if (RESULTS / PREFIX / h / "sft_cont" / "summary.json").is_file()
    ]
    if not halves:
        return "Confirmation on new users: not run yet (--confirm 1, --confirm 2)"
    names = BASELINE_RUNS + ["sft", "sft_cont", "sdpo_k3", "sdpo_k19"]
    have = [
        f"{PREFIX}/{h}/{n}"
        for h in halves
        for n in names
        if (RESULTS / PREFIX / h / n / "summary.json").is_file()
    ]
    pairs = [
        ("sdpo_k3", "sft_cont"),
        ("sdpo_k3", "sft"),
        ("sft_cont", "sft"),
        ("sft", "baselines/most_popular_lm_rows"),
        ("sdpo_k19", "sft_cont"),
        ("sdpo_k19", "sft"),
    ]
    lines = [detail_table(have, _timings()), "", user_table(halves, pairs)]
    if (
        len(halves) == 2
    ):  # every scored row: the best estimate of the effect, not the test fixed in advance
        lines += [
            "",
            "All test rows together (an estimate over every row scored; not the test fixed in advance)",
            "",
            user_table(["test", *halves], [p for p in pairs if not p[1].startswith("baselines/")]),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
