"""All-item study on CPU: SFT, then four equal-compute continuations, ranked over the catalogue.

SmolLM2-135M-Instruct (GGUF, ../shared/models) with LoRA on the top 6 of its 30 layers (the
LastFM and MovieLens studies' setting, trunk cache on), trained and tested in the all-item
protocol (docs/all_item.md): history-only prompts, constrained beam search over every
catalogue title (top N = 10, beam width 10, summed log-probs, history items excluded).

Data (``--dataset``; each is its own runner, one thread, so the two run side by side):

* ``lastfm``: the shared splits. ``train.json`` (2,117 rows, no user ids: a user's rows are
  consecutive sliding windows, chained into users as in ``run.py``) is split by user, seeded:
  ``--align-rows`` rows of held-out users for the continuations, every other row for the SFT.
  Test: all 650 rows of ``valid.json``, the rows the committed all-item baselines ranked
  (``results/baselines/all_item_lastfm``, fitted on ``train.json`` = SFT + alignment rows).
  Catalogue: ``sdpo-prepare catalogue train.json valid.json`` (4,606 artists).
* ``ml100k``: ``sdpo-prepare movielens-100k`` (1,682 movies, users split 80/10/10, seed 42).
  SFT rows: ``--sft-rows`` sampled from 80 % of the training users; alignment rows from the
  other 20 %; test: ``--test-rows`` seeded rows of ``valid.json`` (users no model saw).
  Baselines are fitted here on the LM's rows (SFT + alignment) and on all of ``train.json``.

Stages (each resumable, markers in ``--out``):

1. ``fit_sft``: SFT, two epochs, lr 1e-3 (the studies' SFT), all-item prompts;
2. from that adapter, one epoch over the same alignment rows, same lr, batch and steps —
   equal extra compute in optimizer steps (the on-policy refresh adds no-grad beam searches,
   whose time the table reports):
   ``sft_cont`` (SFT continued: the control), ``sdpo_onpolicy`` (S-DPO, K=3, the policy's
   own top-4 beams minus the target, refreshed every step), ``sdpo_random`` (S-DPO, K=3,
   uniform catalogue draws), ``dpo_onpolicy`` (DPO, the policy's top non-target item:
   SPRec-like); reference = the SFT adapter, scored live;
3. ``test_*``: every adapter on the same test rows;
4. ``--table``: HR@10 and NDCG@10 with 95 % intervals over rows and over users, and paired
   differences against the control.

**Pre-registered** (``PRIMARY``, fixed in this file and committed before any test stage
ran): on each data set, on-policy S-DPO minus SFT continued, HR@10, 95 % paired bootstrap
interval over users. It is reported as registered, whatever its sign; every other
difference is secondary.

    python benchmarks/quality/all_item_study.py --dataset lastfm --out ../sdpo_allitem
    python benchmarks/quality/all_item_study.py --dataset ml100k --out ../sdpo_allitem
    python benchmarks/quality/all_item_study.py --table
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lastfm_study import collect, save_timings  # noqa: E402
from run import GGUF, REPO, SHARED, Runner, lastfm_users, write_rows  # noqa: E402

RESULTS = REPO / "benchmarks" / "quality" / "results" / "all_item"

#: the primary comparison, registered before scoring (module doc)
PRIMARY = {
    "treatment": "sdpo_onpolicy",
    "control": "sft_cont",
    "metric": "hr@10",
    "interval": "95% paired bootstrap over users, 10,000 resamples, seed 0",
    "datasets": ["lastfm", "ml100k"],
    "registered": "2026-12-07, before any test stage of this study ran",
}

#: (run, label, objective, K, data.negative_sampling), in the order they are fitted
ARMS: list[tuple[str, str, str, int, str]] = [
    ("sft_cont", "SFT continued (control)", "sft", 3, "random"),
    ("sdpo_onpolicy", "S-DPO K=3, on-policy", "sdpo", 3, "on_policy_beam"),
    ("sdpo_random", "S-DPO K=3, catalogue-random", "sdpo", 3, "random"),
    ("dpo_onpolicy", "DPO, one on-policy negative", "dpo", 1, "on_policy_beam"),
]
#: ``--successors`` (issue 30's real-data comparison, secondary to ``PRIMARY``): the successor
#: objectives with the same on-policy negatives, rows, steps and β as ``sdpo_onpolicy``
SUCCESSORS: list[tuple[str, str, str, int, str]] = [
    ("dmpo_onpolicy", "DMPO K=3, on-policy", "dmpo", 3, "on_policy_beam"),
    ("ipo_k_onpolicy", "IPO (mean over K=3), on-policy", "ipo_k", 3, "on_policy_beam"),
    (
        "softmax_simpo_onpolicy",
        "softmax SimPO K=3, on-policy",
        "softmax_simpo",
        3,
        "on_policy_beam",
    ),
    ("dynamicpo_onpolicy", "DynamicPO K=3, on-policy", "dynamicpo", 3, "on_policy_beam"),
]
LABELS = {"sft": "SFT"} | {name: label for name, label, *_ in ARMS + SUCCESSORS}

DATASETS = {
    "lastfm": {
        "sft_cfg": "configs/lastfm/smollm2/sft.yaml",
        "align_cfg": "configs/lastfm/smollm2/sdpo.yaml",
        "templates": "music",
    },
    "ml100k": {
        "sft_cfg": "configs/movielens/smollm2/sft.yaml",
        "align_cfg": "configs/movielens/smollm2/sdpo.yaml",
        "templates": "movies",
    },
}
TOP_N = 10
ALIGN_LR = 5e-4


def split(dataset: str, out: Path, seed: int, sft_rows: int, align_rows: int, test_rows: int):
    """Write the study's files under ``out/<dataset>`` (module doc); returns the paths, the
    catalogue and each test row's user."""
    data = out / dataset
    rng = random.Random(seed)
    if dataset == "lastfm":
        src = SHARED / "data" / "lastfm"
        catalogue = out / "lastfm_catalogue.json"
        if not catalogue.is_file():
            subprocess.run(
                [sys.executable, "-m", "sdpo_lightning.data.prepare", "catalogue",
                 str(src / "train.json"), str(src / "valid.json"), "--out", str(catalogue)],
                check=True, cwd=REPO,
            )  # fmt: skip
        train = json.loads((src / "train.json").read_text())
        test = json.loads((src / "valid.json").read_text())
        users = lastfm_users(train)
        groups = sorted(set(users))
        rng.shuffle(groups)
        held, taken = set(), 0
        for g in groups:  # whole users until the alignment rows are reached
            if taken >= align_rows:
                break
            held.add(g)
            taken += users.count(g)
        files = {
            "sft": [r for r, u in zip(train, users, strict=True) if u not in held],
            "align": [r for r, u in zip(train, users, strict=True) if u in held],
            "test": test,
        }
        test_users = [f"u{u}" for u in lastfm_users(test)]
    else:
        full = out / "ml100k_full"
        if not (full / "catalogue.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "sdpo_lightning.data.prepare", "movielens-100k",
                 "--raw", str(SHARED / "data" / "ml-100k"), "--out", str(full), "-q"],
                check=True, cwd=REPO,
            )  # fmt: skip
        catalogue = full / "catalogue.json"
        train = json.loads((full / "train.json").read_text())
        valid = json.loads((full / "valid.json").read_text())
        ids = sorted({r["user_id"] for r in train}, key=int)
        rng.shuffle(ids)
        sft_users = set(ids[: round(0.8 * len(ids))])
        files = {
            "sft": rng.sample([r for r in train if r["user_id"] in sft_users], sft_rows),
            "align": rng.sample([r for r in train if r["user_id"] not in sft_users], align_rows),
            "test": [valid[i] for i in sorted(rng.sample(range(len(valid)), test_rows))],
            "train_full": train,
        }
        test_users = [r["user_id"] for r in files["test"]]
    files["lm_rows"] = files["sft"] + files["align"]
    files["val"] = files["align"][:64]  # the SFT's validation loss curve (rows it never trains on)
    paths = write_rows(data, files)
    counts = {k: len(v) for k, v in files.items()} | {"test_users": len(set(test_users))}
    for where in (data, RESULTS / dataset):  # the table's bootstrap over users reads the latter
        where.mkdir(parents=True, exist_ok=True)
        (where / "split.json").write_text(json.dumps(counts) + "\n")
        (where / "test_users.json").write_text(json.dumps(test_users) + "\n")
    return paths, catalogue, test_users


#: (run, training rows, baseline, config of the sequential ones): ``lm_rows`` = the LM's SFT +
#: alignment rows (the same training rows), ``train_full`` = every training row (context);
#: the sequential models take the LastFM configs on the LM's rows (a data set of LastFM's size)
ML_BASELINES = [
    *[(f"{b}_lm_rows", "lm_rows", b, None) for b in ("random", "most_popular", "item_knn")],
    *[(f"{b}_full", "train_full", b, None) for b in ("random", "most_popular", "item_knn")],
    *[(f"{m}_lm_rows", "lm_rows", m, f"configs/baselines/{m}_lastfm.yaml") for m in ("sasrec", "gru4rec", "morec")],
    *[(f"{m}_full", "train_full", m, f"configs/baselines/{m}_ml100k.yaml") for m in ("sasrec", "gru4rec")],
]  # fmt: skip


def baselines(run: Runner, files: dict, catalogue: Path, work: Path, dry_run: bool) -> None:
    """MovieLens-100K baselines in the all-item protocol on the study's test rows, seed 0
    (LastFM's are the committed ``results/baselines/all_item_lastfm``: the same rows)."""
    from sdpo_lightning.evaluation.compact_predictions import compact_file

    for name, rows, model, cfg in ML_BASELINES:
        dest = RESULTS / "ml100k" / "baselines" / name
        if cfg is None:
            args = [
                model,
                "--train",
                str(files[rows]),
                "--test",
                str(files["test"]),
                "--out",
                str(dest),
                "--seed",
                "0",
                "--dataset",
                "ml100k",
                "--run",
                name,
                "--protocol",
                "all_item",
                "--catalogue",
                str(catalogue),
                "--top_n",
                str(TOP_N),
                "-q",
            ]
        else:
            args = [
                "fit",
                "-c",
                cfg,
                "--seed_everything",
                "0",
                "--data.train_file",
                str(files[rows]),
                "--data.test_file",
                str(files["test"]),
                "--data.dataset",
                "ml100k",
                "--data.protocol",
                "all_item",
                "--data.catalogue_file",
                str(catalogue),
                "--data.top_n",
                str(TOP_N),
                "--trainer.default_root_dir",
                str(work / "runs" / "baselines" / name),
                "--trainer.logger.init_args.save_dir",
                str(work / "runs" / "baselines" / name),
                "--model.init_args.report_dir",
                str(dest),
            ]
            if model == "morec":
                args += ["--model.init_args.embedding_cache_dir", str(work.parent / "morec_cache")]
        # fmt: skip
        run.stage(f"fit_{name}", args, module="sdpo_lightning.baselines")
        if not dry_run and (dest / "predictions.jsonl").is_file():
            compact_file(dest / "predictions.jsonl", dest / "predictions.jsonl.gz")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", choices=sorted(DATASETS))
    p.add_argument("--out", type=Path, default=REPO.parent / "sdpo_allitem")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sft-rows", type=int, default=2000, help="ml100k only (LastFM: every row)")
    p.add_argument("--align-rows", type=int, default=256)
    p.add_argument("--test-rows", type=int, default=400, help="ml100k only (LastFM: all 650)")
    p.add_argument("--only", nargs="*", help="run names (sft, sft_cont, ..., baselines)")
    p.add_argument(
        "--successors",
        action="store_true",
        help="also fit and test the successor objectives (SUCCESSORS), after every other stage",
    )
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--table", action="store_true", help="print the committed results' tables")
    a = p.parse_args(argv)
    if a.table:
        from all_item_table import render

        print(render())
        return 0
    if a.dataset is None:
        p.error("--dataset is required (or --table)")
    if not GGUF.is_file():
        raise SystemExit(f"the study needs {GGUF}")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ds = DATASETS[a.dataset]
    files, catalogue, _ = split(
        a.dataset, out, a.seed, a.sft_rows, a.align_rows, a.test_rows
    )  # fmt: skip
    run = Runner(out / a.dataset, a.dry_run)
    len_sft = len(json.loads(files["sft"].read_text()))
    runs = out / a.dataset / "runs"

    def wanted(name: str) -> bool:
        return not a.only or name in a.only

    def done(stage: str) -> bool:
        return (out / a.dataset / "done" / stage).exists()

    common = [
        "--seed_everything", str(a.seed),
        "--model.source.model_name_or_path", str(GGUF),
        "--data.val_file", str(files["val"]),
        "--data.test_file", str(files["test"]),
        "--data.prompt_templates", ds["templates"],
        "--data.train_protocol", "all_item",
        "--data.catalogue_file", str(catalogue),
        "--data.catalogue_candidates", "3",
        "--data.limit_val_examples", "64",
        "--model.eval.val_ranking", "false",
    ]  # fmt: skip
    test_args = [
        "--model.eval.eval_protocols", "[all_item]",
        "--model.eval.catalogue_file", str(catalogue),
        "--model.eval.top_n", str(TOP_N),
        "--model.eval.beam_width", str(TOP_N),
        "--model.eval.all_item_free_generation", "false",
    ]  # fmt: skip

    def test(name: str) -> None:
        """``sdpo test`` of run ``name``'s adapter; the command is kept beside its results."""
        if not done(f"fit_{name}"):
            return
        args = [
            "test", "-c", ds["align_cfg"], *common, *test_args,
            "--model.output.method", LABELS[name],
            "--model.source.init_adapter", str(runs / name / "export"),
            "--trainer.default_root_dir", str(runs / name / "test"),
        ]  # fmt: skip
        run.stage(f"test_{name}", args)
        if done(f"test_{name}") and not a.dry_run:
            collect(runs / name / "test", f"all_item/{a.dataset}/{name}")
            cmd = (
                shlex.join(["sdpo", *args])
                .replace(str(out), "$OUT")
                .replace(str(SHARED), "../shared")
            )
            fits = sorted((runs / name).glob("csv/version_*/metrics.csv"))
            if fits:  # the fit's curves: losses, rewards, train/negatives/*
                shutil.copy2(fits[-1], RESULTS / a.dataset / name / "fit_metrics.csv")
            (RESULTS / a.dataset / name / "command.txt").write_text(cmd + "\n")

    def fit_arm(name: str, objective: str, k: int, negatives: str) -> None:
        run.stage(
            f"fit_{name}",
            [
                "fit", "-c", ds["align_cfg"], *common,
                "--data.train_file", str(files["align"]),
                "--trainer.default_root_dir", str(runs / name),
                "--trainer.max_epochs", "1",
                "--trainer.val_check_interval", str(min(16, -(-a.align_rows // 4))),
                "--model.source.init_adapter", str(runs / "sft" / "export"),
                "--model.objective.name", objective,
                "--model.objective.num_negatives", str(k),
                "--model.scoring.reference", "live",
                "--model.optim.learning_rate", str(ALIGN_LR),
                "--model.optim.warmup_steps", "5",
                "--data.negative_sampling", negatives,
                "--data.catalogue_sampling", "uniform",
            ],
        )  # fmt: skip

    if a.dataset == "ml100k" and wanted("baselines"):
        baselines(run, files, catalogue, out / a.dataset, a.dry_run)
    if wanted("sft"):
        run.stage(
            "fit_sft",
            [
                "fit", "-c", ds["sft_cfg"], *common,
                "--data.train_file", str(files["sft"]),
                "--trainer.default_root_dir", str(runs / "sft"),
                "--trainer.max_epochs", "2",
                "--trainer.val_check_interval", str(min(100, -(-len_sft // 4))),
            ],
        )  # fmt: skip
    if not done("fit_sft"):
        return 0 if a.dry_run else 1
    # the primary pair first, then its tests, then the secondary arms and the SFT's test
    order = ["sft_cont", "sdpo_onpolicy", "@test", "sdpo_random", "dpo_onpolicy", "@rest"]
    arms = {name: (objective, k, neg) for name, _, objective, k, neg in ARMS}
    for step in order:
        if step == "@test":
            for name in ("sft_cont", "sdpo_onpolicy"):
                if wanted(name):
                    test(name)
        elif step == "@rest":
            for name in ("sft", "sdpo_random", "dpo_onpolicy"):
                if wanted(name):
                    test(name)
        elif wanted(step):
            fit_arm(step, *arms[step])
    for name, _, objective, k, neg in SUCCESSORS if a.successors else []:
        if wanted(name):
            fit_arm(name, objective, k, neg)
            test(name)
    if not a.dry_run:
        save_timings(run, RESULTS / a.dataset / "timings.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
