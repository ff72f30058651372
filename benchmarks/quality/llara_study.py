"""The LastFM study's LLaRA rows: hybrid item prompts (``model.hybrid``) with SmolLM2-135M.

Same work directory, split, runner and results directory as ``lastfm_study.py``; stages:

1. ``fit_llara_sasrec``: SASRec (``configs/baselines/sasrec_lastfm.yaml``) fitted on the
   study's fit rows (its own seeded 80/20 user split of them picks the epoch), tested on the
   650 ``valid.json`` rows (a row of the table), and its item embeddings written as the item
   table ``<out>/items`` (``model.init_args.item_table_dir``);
2. ``fit_llara``: SFT with hybrid prompts, otherwise the text SFT's run (``sft_e6``: the same
   config, fit rows, 6 epochs, lr, LoRA layers and validation), with LLaRA's curriculum (the
   probability of the hybrid form rising from 0 to 1 over the run). The projector trains and
   feeds layer 0, so the trunk cache is off and every step runs all 30 layers (2 s a step
   early to 4.5 s late in the curriculum on 2 CPU cores; 14,254 s in all). Every epoch's checkpoint and a ``last.ckpt`` (every validation) are kept,
   and a rerun resumes from ``last.ckpt``, so the stage can be spread over several starts;
   ``test_llara`` on ``valid.json``;
3. ``fit_llara.<run>`` for each of ``LLARA_ALIGN``: the committed S-DPO row's setting from
   the LLaRA adapter (projector frozen, so policy and reference share it and the trunk cache
   is on again); tested likewise.

    python benchmarks/quality/llara_study.py --out ../sdpo_study          # all stages
    python benchmarks/quality/llara_study.py --table                      # rows and pairs
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lastfm_study import (  # noqa: E402
    ALIGN_CFG,
    RESULTS,
    SFT_CFG,
    _deltas,
    _hits,
    collect,
    detail_table,
    save_timings,
)
from run import GGUF, LASTFM, REPO, Runner, split_data  # noqa: E402

SASREC_CFG = "configs/baselines/sasrec_lastfm.yaml"
#: the text SFT's budget (``sft_e6``) plus hybrid prompts and LLaRA's curriculum
LLARA_SFT_ARGS = [
    "--trainer.max_epochs",
    "6",
    "--model.scoring.trunk_cache",
    "false",
    "--model.hybrid.curriculum_start",
    "0.0",
    "--model.hybrid.curriculum_end",
    "1.0",
]
#: (run name, method label, objective, K, beta, lr, extra arguments): the committed S-DPO
#: row's setting (``sft_e6.sdpo_k19_e2_sel``: every other candidate a negative, two epochs on
#: the selection users' rows, lr 1e-4, no validation: those rows are its training rows)
LLARA_ALIGN = [
    (
        "sdpo_k19_e2_sel",
        "LLaRA + S-DPO (K=19, 2 epochs, unseen rows)",
        "sdpo",
        19,
        1.0,
        1e-4,
        ["--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0"],
    ),
]
#: (row, row it is compared with): the paired differences ``--table`` prints
PAIRS = [
    ("llara", "sft_e6"),
    ("llara", "llara_sasrec"),
    ("llara.sdpo_k19_e2_sel", "llara"),
    ("llara.sdpo_k19_e2_sel", "sft_e6.sdpo_k19_e2_sel"),
    ("llara.sdpo_k19_e2_sel", "sft_e6"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO.parent / "sdpo_study",
        help="work directory (outside the repo; the one of lastfm_study.py)",
    )
    p.add_argument("--seed", type=int, default=42, help="the split's seed (as lastfm_study.py)")
    p.add_argument("--select-frac", type=float, default=0.1)
    p.add_argument("--align-rows", type=int, default=480)
    p.add_argument(
        "--only", nargs="*", help="run names to do (llara_sasrec, llara, llara.<run>); default: all"
    )
    p.add_argument("--stage-args", default="", help="extra arguments for the sdpo stages")
    p.add_argument(
        "--eval-trunk",
        action="store_true",
        help="as in lastfm_study.py (model.scoring.eval_trunk_dir)",
    )
    p.add_argument(
        "--table",
        action="store_true",
        help="only print the LLaRA rows and their paired differences",
    )
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    if a.table:
        print(table())
        return 0
    if not GGUF.is_file() or not (LASTFM / "train.json").is_file():
        print(f"the study needs {GGUF} and {LASTFM}/train.json", file=sys.stderr)
        return 2
    out = a.out.resolve()
    files = split_data(out, a.seed, a.select_frac, a.align_rows, test_rows=10**9)
    run, runs = Runner(out, a.dry_run), out / "runs"
    done = lambda stage: a.dry_run or (out / "done" / stage).exists()  # noqa: E731
    wanted = lambda name: not a.only or name in a.only  # noqa: E731
    data = [
        "--data.val_file",
        str(files["select"]),
        "--data.test_file",
        str(files["test"]),
        *shlex.split(a.stage_args),
    ]
    trunk = ["--model.scoring.eval_trunk_dir", str(out / "eval_trunk")] if a.eval_trunk else []
    items = out / "items"

    if wanted("llara_sasrec"):
        root = runs / "llara_sasrec"
        run.stage(
            "fit_llara_sasrec",
            [
                "fit",
                "-c",
                SASREC_CFG,
                "--seed_everything",
                "0",
                "--data.train_file",
                str(files["fit"]),
                "--data.test_file",
                str(files["test"]),
                "--trainer.default_root_dir",
                str(root),
                "--trainer.logger.init_args.save_dir",
                str(root),
                "--model.init_args.report_dir",
                str(root),
                "--model.init_args.method",
                "SASRec (study fit rows)",
                "--model.init_args.item_table_dir",
                str(items),
            ],
            module="sdpo_lightning.baselines",
        )
        if not a.dry_run and done("fit_llara_sasrec"):
            collect(root, "llara_sasrec")

    def test(name: str, cfg: str, method: str) -> None:
        run.stage(
            f"test_{name}",
            [
                "test",
                "-c",
                cfg,
                *data,
                "--trainer.default_root_dir",
                str(runs / name),
                "--model.source.init_adapter",
                str(runs / name / "export"),
                "--model.output.method",
                method,
                "--model.output.run_name",
                name,
                *trunk,
            ],
        )
        if not a.dry_run and done(f"test_{name}"):
            collect(runs / name, name)

    if wanted("llara") and done("fit_llara_sasrec"):
        epochs = runs / "llara" / "epochs"
        keep = [
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={epochs}",
            "--trainer.callbacks.save_top_k=-1",
            "--trainer.callbacks.save_last=true",
        ]
        resume = (
            ["--ckpt_path", str(epochs / "last.ckpt")] if (epochs / "last.ckpt").is_file() else []
        )
        run.stage(
            "fit_llara",
            [
                "fit",
                "-c",
                SFT_CFG,
                *data,
                "--data.train_file",
                str(files["fit"]),
                "--trainer.default_root_dir",
                str(runs / "llara"),
                "--model.hybrid.item_table",
                str(items),
                *LLARA_SFT_ARGS,
                *keep,
                *resume,
            ],
        )
        if done("fit_llara"):
            test("llara", SFT_CFG, "LLaRA (hybrid SFT)")
    for short, method, objective, k, beta, lr, extra in LLARA_ALIGN:
        name = f"llara.{short}"
        if not wanted(name) or not done("fit_llara"):
            continue
        train = files["select"] if short.endswith("_sel") else files["align"]
        run.stage(
            f"fit_{name}",
            [
                "fit",
                "-c",
                ALIGN_CFG,
                *data,
                "--data.train_file",
                str(train),
                "--trainer.default_root_dir",
                str(runs / name),
                "--model.source.init_adapter",
                str(runs / "llara" / "export"),
                "--model.objective.name",
                objective,
                "--model.objective.num_negatives",
                str(k),
                "--model.objective.beta",
                str(beta),
                "--model.optim.learning_rate",
                str(lr),
                "--model.scoring.reference_cache_dir",
                str(out / "reference_cache" / name),
                *extra,
            ],
        )
        if done(f"fit_{name}"):
            test(name, ALIGN_CFG, method)
    if not a.dry_run:
        save_timings(run)
    return 0


def table() -> str:
    """The LLaRA rows (both protocols, intervals, wall times) and the paired differences."""
    rows = [
        n
        for n in (
            "sft_e6",
            "sft_e6.sdpo_k19_e2_sel",
            "llara_sasrec",
            "llara",
            *[f"llara.{s}" for s, *_ in LLARA_ALIGN],
        )
        if (RESULTS / n / "summary.json").is_file()
    ]
    lines = [
        detail_table(rows),
        "",
        "| row | minus | rows | gen HR@1 Δ [95% CI] | rank HR@1 Δ [95% CI] |",
        "|:---|:---|---:|---:|---:|",
    ]
    for mine, other in PAIRS:
        if mine in rows and other in rows:
            n, cells = _deltas(_hits(mine), _hits(other))
            lines.append(f"| `{mine}` | `{other}` | {n} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
