"""The LastFM study: can S-DPO beat SFT with SmolLM2-135M on CPU, against simple baselines?

Stages (each a real ``sdpo`` run, resumable, shareable between runners; see ``run.py``'s
``Runner``):

1. split: ``train.json`` by user into fit rows and a selection split (learning curves);
   the test rows are the **full** 650-row ``valid.json``;
2. ``fit_sft`` with ``configs/lastfm/smollm2/sft.yaml`` (LoRA on the top layers, trunk cache),
   validating on the selection split every ``val_check_interval`` steps (the learning curve:
   ranking HR@1 against examples seen); ``test_sft`` on ``valid.json`` (both protocols);
3. from that SFT adapter, at equal extra budget (the same ``--align-rows`` fit rows, one
   epoch, same batch size): SFT continued, DPO, DPO-K (K=3), S-DPO K=3 and K=8, and a small
   β / lr sweep of S-DPO K=3; each tested on ``valid.json``;
4. ``SWITCH``: the 6-epoch SFT run resumed from its epoch-3 checkpoint with S-DPO (with and
   without an NLL term) for epochs 4–6, everything else equal, against that SFT run itself
   (``sft_e6_ep3`` is the SFT at the switch point, exported and tested).

After each stage its ``summary.json``, ``predictions.jsonl`` (compacted: ``predictions.jsonl.gz``
without the prompt and target, see ``results/README.md``) and metrics CSV are copied into
``benchmarks/quality/results/<run>/`` (small files, committed), and the stage wall
times into ``benchmarks/quality/results/timings.json``. Work files (checkpoints, logs, the
reference cache) stay in ``--out``. ``--only`` picks stages, so the work can be spread over
several starts or runners:

    python benchmarks/quality/lastfm_study.py --out ../sdpo_study            # everything
    python benchmarks/quality/lastfm_study.py --out ../sdpo_study --only sft # stage 2 only
    python benchmarks/quality/lastfm_study.py --out ../sdpo_study --table    # render the table
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import GGUF, LASTFM, REPO, Runner, split_data  # noqa: E402

RESULTS = REPO / "benchmarks" / "quality" / "results"
SFT_CFG, ALIGN_CFG = "configs/lastfm/smollm2/sft.yaml", "configs/lastfm/smollm2/sdpo.yaml"

#: (run name, method label, objective, K, beta, lr, extra ``sdpo fit`` arguments); the
#: ``sft_cont`` rows are the "SFT continued" controls at their learning rate. Plain names run
#: at lr 1e-4, the SFT's final learning rate (1e-3 decayed by ``min_lr_ratio`` 0.1): restarting
#: at 5e-4 moved every continued run, SFT included, below the SFT it started from
ALIGN: list[tuple[str, str, str, int, float, float, list[str]]] = [
    ("sft_cont", "SFT (continued)", "sft", 3, 1.0, 1e-4, []),
    ("sdpo_k3", "S-DPO (K=3)", "sdpo", 3, 1.0, 1e-4, []),
    ("dpo", "DPO", "dpo", 1, 1.0, 1e-4, []),
    ("dpo_k3", "DPO-K (K=3)", "dpo_k", 3, 1.0, 1e-4, []),
    ("sdpo_k8", "S-DPO (K=8)", "sdpo", 8, 1.0, 1e-4, []),
    ("sdpo_k3_b0.5", "S-DPO (K=3, β=0.5)", "sdpo", 3, 0.5, 1e-4, []),
    ("sdpo_k3_b2", "S-DPO (K=3, β=2)", "sdpo", 3, 2.0, 1e-4, []),
    ("sdpo_k3_lr5e-4", "S-DPO (K=3, lr 5e-4)", "sdpo", 3, 1.0, 5e-4, []),
    ("sft_cont_lr5e-4", "SFT (continued, lr 5e-4)", "sft", 3, 1.0, 5e-4, []),
    ("sdpo_k8_lr5e-4", "S-DPO (K=8, lr 5e-4)", "sdpo", 8, 1.0, 5e-4, []),
    ("dpo_lr5e-4", "DPO (lr 5e-4)", "dpo", 1, 1.0, 5e-4, []),
    ("dpo_k3_lr5e-4", "DPO-K (K=3, lr 5e-4)", "dpo_k", 3, 1.0, 5e-4, []),
    ("sdpo_k3_b0.5_lr5e-4", "S-DPO (K=3, β=0.5, lr 5e-4)", "sdpo", 3, 0.5, 5e-4, []),
    ("sdpo_k3_b2_lr5e-4", "S-DPO (K=3, β=2, lr 5e-4)", "sdpo", 3, 2.0, 5e-4, []),
    # hard negatives: the K candidates the reference (the SFT adapter) scores highest
    (
        "sdpo_k3_hard_lr5e-4",
        "S-DPO (K=3, hard negatives, lr 5e-4)",
        "sdpo",
        3,
        1.0,
        5e-4,
        ["--data.negative_sampling", "hard"],
    ),
    # listwise: every other candidate a negative (K=19 of 20), two epochs; made for the
    # unseen selection rows (--align-data select), against SFT continued with the same budget
    (
        "sdpo_k19_e2_lr2e-4",
        "S-DPO (K=19, 2 epochs, lr 2e-4)",
        "sdpo",
        19,
        1.0,
        2e-4,
        ["--trainer.max_epochs", "2"],
    ),
    ("sdpo_k19_e2", "S-DPO (K=19, 2 epochs)", "sdpo", 19, 1.0, 1e-4, ["--trainer.max_epochs", "2"]),
    (
        "sft_cont_e2_lr2e-4",
        "SFT (continued, 2 epochs, lr 2e-4)",
        "sft",
        3,
        1.0,
        2e-4,
        ["--trainer.max_epochs", "2"],
    ),
    (
        "sft_cont_e2",
        "SFT (continued, 2 epochs)",
        "sft",
        3,
        1.0,
        1e-4,
        ["--trainer.max_epochs", "2"],
    ),
    # S-DPO plus λ = 1 times the chosen title's NLL (model.objective.sft_weight), the same two epochs
    (
        "sdpo_k19_e2_nll",
        "S-DPO (K=19, 2 epochs, + NLL)",
        "sdpo",
        19,
        1.0,
        1e-4,
        ["--trainer.max_epochs", "2", "--model.objective.sft_weight", "1.0"],
    ),
]

#: each alignment run's "SFT continued" control: the same rows, epochs and learning rate
CONTROL: dict[str, str] = {
    **{
        n: "sft_cont" for n in ("sdpo_k3", "dpo", "dpo_k3", "sdpo_k8", "sdpo_k3_b0.5", "sdpo_k3_b2")
    },
    **{
        n: "sft_cont_lr5e-4"
        for n in (
            "sdpo_k3_lr5e-4",
            "sdpo_k8_lr5e-4",
            "dpo_lr5e-4",
            "dpo_k3_lr5e-4",
            "sdpo_k3_b0.5_lr5e-4",
            "sdpo_k3_b2_lr5e-4",
            "sdpo_k3_hard_lr5e-4",
        )
    },
    "sdpo_k19_e2": "sft_cont_e2",
    "sdpo_k19_e2_nll": "sft_cont_e2",
    "sdpo_k19_e2_lr2e-4": "sft_cont_e2_lr2e-4",
}

#: objectives for the last epochs of the SFT run: each resumes the 6-epoch SFT (``sft_e6``) from
#: its end-of-epoch-``SWITCH_EPOCH`` checkpoint (weights, AdamW moments, lr schedule, loop
#: counters) and trains its remaining epochs on the same fit rows with another objective, the
#: reference being the SFT at that epoch. The paired control is ``sft_e6`` itself, the same run
#: continued with SFT: equal rows, epochs, schedule and starting state. (name, label,
#: objective, K, beta, extra ``sdpo fit`` arguments)
SWITCH_EPOCH = 3
SWITCH: list[tuple[str, str, str, int, float, list[str]]] = [
    ("sdpo_k3_ep4", "S-DPO (K=3) for SFT epochs 4–6", "sdpo", 3, 1.0, []),
    (
        "sdpo_k3_nll_ep4",
        "S-DPO (K=3) + NLL for SFT epochs 4–6",
        "sdpo",
        3,
        1.0,
        ["--model.objective.sft_weight", "1.0"],
    ),
    # the listwise form: every other candidate a negative (the ranking protocol's softmax)
    ("sdpo_k19_ep4", "S-DPO (K=19) for SFT epochs 4–6", "sdpo", 19, 1.0, []),
    (
        "sdpo_k19_nll_ep4",
        "S-DPO (K=19) + NLL for SFT epochs 4–6",
        "sdpo",
        19,
        1.0,
        ["--model.objective.sft_weight", "1.0"],
    ),
]
CONTROL.update({name: "sft_e6" for name, *_ in SWITCH})

#: SFT budgets (run name → extra ``sdpo fit`` arguments); ``--base`` picks the one the
#: alignment runs start from, whose runs are then named ``<base>.<run>`` (``sft``: plain names)
SFT_RUNS: dict[str, list[str]] = {
    "sft": [],
    "sft_e6": ["--trainer.max_epochs", "6"],
}
#: method labels in the tables: the 6-epoch run is the study's SFT (its adapter is committed)
SFT_LABELS = {"sft": "SFT (3 epochs)", "sft_e6": "SFT"}


def seed_base(adapter: Path, export: Path, marker: Path) -> None:
    """Use a trained adapter as the SFT stage's output (no SFT run): copy its files into the
    stage's export directory and mark the stage done; an export already there must match."""
    files = ("adapter_config.json", "adapter_model.safetensors")
    if not all((adapter / f).is_file() for f in files):
        raise SystemExit(
            f"--base-adapter {adapter}: not a peft adapter directory (needs {' and '.join(files)})"
        )
    if export.is_dir() and any(export.iterdir()):
        if any(
            not (export / f).is_file() or (export / f).read_bytes() != (adapter / f).read_bytes()
            for f in files
        ):
            raise SystemExit(
                f"--base-adapter {adapter}: {export} already holds a different adapter"
            )
    else:
        export.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(adapter / f, export / f)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def resume_state(epochs_dir: Path, epoch: int) -> Path | None:
    """The end-of-``epoch`` checkpoint of a fit (``ModelCheckpoint`` keeping every epoch in
    ``epochs_dir``) without its ``hyper_parameters``, so that ``sdpo fit --ckpt_path`` resumes
    its weights, optimizer, schedule and loops under the command line's model (LightningCLI
    would otherwise parse the stored SFT hyperparameters over it). None while it is missing."""
    import torch

    found = sorted(epochs_dir.glob(f"epoch={epoch - 1}-step=*.ckpt"))
    if not found:
        return None
    state = epochs_dir / f"state-epoch{epoch}.ckpt"
    if not state.is_file() or state.stat().st_mtime < found[0].stat().st_mtime:
        ckpt = torch.load(found[0], map_location="cpu", weights_only=True)
        ckpt.pop("hyper_parameters", None)
        tmp = state.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, state)
    return state


def collect(run_dir: Path, name: str) -> None:
    """Copy a run's small result files into the repository's results directory; the
    predictions go in compact form (``predictions.jsonl.gz``, ``compact_predictions``)."""
    from sdpo_lightning.evaluation.compact_predictions import compact_file

    dest = RESULTS / name
    dest.mkdir(parents=True, exist_ok=True)
    if (run_dir / "summary.json").is_file():
        shutil.copy2(run_dir / "summary.json", dest / "summary.json")
    if (run_dir / "predictions.jsonl").is_file():
        compact_file(run_dir / "predictions.jsonl", dest / "predictions.jsonl.gz", keep_source=True)
        (dest / "predictions.jsonl").unlink(missing_ok=True)  # an older full copy
    # the fit logs csv/version_0 (and one more version per resume), the test the last version
    metrics = sorted(
        run_dir.glob("csv/version_*/metrics.csv"), key=lambda m: int(m.parent.name.split("_")[1])
    )
    if metrics:
        shutil.copy2(metrics[-1], dest / "metrics.csv")
    rows, fields = fit_rows(metrics[:-1] if len(metrics) > 1 else metrics)
    curve = learning_curve(rows)
    if curve or any(
        r.get("train/loss") for r in rows
    ):  # the fit's training (and validation) curves
        with (dest / "fit_metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    if curve:
        with (dest / "learning_curve.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(curve[0]))
            w.writeheader()
            w.writerows(curve)


def fit_rows(parts: list[Path]) -> tuple[list[dict], list[str]]:
    """The rows of a fit's metrics CSVs, one per start (the first run, then each resume), as
    one log: a part's rows from the next part's first step on were redone after the resume
    (the work lost since the last checkpoint) and are dropped. Returns rows and columns."""
    logs, fields = [], []
    for m in parts:
        with m.open() as f:
            reader = csv.DictReader(f)
            logs.append(list(reader))
            fields += [c for c in reader.fieldnames or [] if c not in fields]
    rows: list[dict] = []
    for i, log in enumerate(logs):
        later = logs[i + 1] if i + 1 < len(logs) else []
        nxt = min((int(float(r["step"])) for r in later if r.get("step")), default=None)
        rows += [r for r in log if nxt is None or not r.get("step") or int(float(r["step"])) < nxt]
    return rows, fields


def save_timings(run: Runner, path: Path = RESULTS / "timings.json") -> None:
    """Merge the wall times of the stages ``run`` ran into ``path`` (other runners and earlier
    work directories keep theirs)."""
    if run.ran:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**(json.loads(path.read_text()) if path.is_file() else {}), **run.ran}
        path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")


def learning_curve(rows: list[dict], batch_size: int = 4) -> list[dict]:
    """Validation points of a fit's metrics rows: step, examples seen, val loss, ranking HR@1 / MRR."""
    out = []
    for r in rows:
        if r.get("val/rank/hr@1"):
            step = int(float(r["step"])) + 1
            out.append(
                {
                    "step": step,
                    "examples_seen": step * batch_size,
                    "val_loss": r.get("val/loss", ""),
                    "val_rank_hr@1": r["val/rank/hr@1"],
                    "val_rank_mrr": r.get("val/rank/mrr", ""),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO.parent / "sdpo_study",
        help="work directory (outside the repo)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--select-frac", type=float, default=0.1, help="share of train users held out for selection"
    )
    p.add_argument(
        "--align-rows", type=int, default=480, help="fit rows of every alignment run (one epoch)"
    )
    p.add_argument("--only", nargs="*", help="run names to do (e.g. sft sdpo_k3); default: all")
    p.add_argument(
        "--base",
        default="sft",
        choices=sorted(SFT_RUNS),
        help="the SFT run the alignment runs start from",
    )
    p.add_argument(
        "--stage-args",
        default="",
        help="extra arguments for every stage, e.g. '--trainer.accelerator gpu'",
    )
    p.add_argument(
        "--align-data",
        default="align",
        choices=["align", "select"],
        help="rows of the alignment runs: `align` (--align-rows of the SFT's fit rows) or "
        "`select` (the held-out selection users' rows, unseen by SFT; runs named <run>_sel)",
    )
    p.add_argument(
        "--private-cache",
        action="store_true",
        help="a reference cache per run (for runners in parallel) instead of one shared by all",
    )
    p.add_argument(
        "--base-adapter",
        type=Path,
        help="start the alignment runs from this adapter (e.g. benchmarks/quality/adapters/sft, the "
        "committed SFT) instead of training --base: it becomes <out>/runs/<base>/export and "
        "fit_<base> is marked done",
    )
    p.add_argument(
        "--eval-trunk",
        action="store_true",
        help="test stages keep the test rows' frozen lower layers in <out>/eval_trunk "
        "(model.scoring.eval_trunk_dir): every test after the first runs the top layers only",
    )
    p.add_argument("--table", action="store_true", help="only render the table from the results")
    p.add_argument(
        "--last", help="with --table: the run compared with every other row (Rel.Ipv, paired p)"
    )
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    if a.table:
        return render(a.last)
    if not GGUF.is_file() or not (LASTFM / "train.json").is_file():
        print(f"the study needs {GGUF} and {LASTFM}/train.json", file=sys.stderr)
        return 2
    out = a.out.resolve()
    files = split_data(out, a.seed, a.select_frac, a.align_rows, test_rows=10**9)
    run = Runner(out, a.dry_run)
    runs = out / "runs"
    data = [
        "--data.val_file",
        str(files["select"]),
        "--data.test_file",
        str(files["test"]),
        *shlex.split(a.stage_args),
    ]
    wanted = lambda name: not a.only or name in a.only  # noqa: E731
    trunk = ["--model.scoring.eval_trunk_dir", str(out / "eval_trunk")] if a.eval_trunk else []

    def test(name: str, cfg: str, method: str, adapter: Path) -> None:
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
                str(adapter),
                "--model.output.method",
                method,
                "--model.output.run_name",
                name,
                *trunk,
            ],
        )
        if not a.dry_run and (out / "done" / f"test_{name}").exists():
            collect(runs / name, name)

    fit_data = [*data, "--data.train_file", str(files["fit"])]
    for sft, extra in SFT_RUNS.items():
        if wanted(sft):
            # every epoch's checkpoint is kept (runs/<sft>/epochs): the SWITCH runs resume one
            keep = [
                "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                f"--trainer.callbacks.dirpath={runs / sft / 'epochs'}",
                "--trainer.callbacks.save_top_k=-1",
            ]
            run.stage(
                f"fit_{sft}",
                [
                    "fit",
                    "-c",
                    SFT_CFG,
                    *fit_data,
                    "--trainer.default_root_dir",
                    str(runs / sft),
                    *extra,
                    *keep,
                ],
            )
            test(sft, SFT_CFG, SFT_LABELS[sft], runs / sft / "export")
    switch(a, run, runs, fit_data, wanted, test)
    base = a.base
    sft_adapter = runs / base / "export"
    if a.base_adapter is not None and not a.dry_run:
        seed_base(a.base_adapter, sft_adapter, out / "done" / f"fit_{base}")
    for short, method, objective, k, beta, lr, extra in ALIGN:
        if a.align_data == "select":
            short = f"{short}_sel"
            method = (
                f"{method[:-1]}, unseen rows)"
                if method.endswith(")")
                else f"{method} (unseen rows)"
            )
        name = short if base == "sft" else f"{base}.{short}"
        if not wanted(name):
            continue
        if not a.dry_run and not (out / "done" / f"fit_{base}").exists():
            print(f"[wait] {name}: needs fit_{base}")
            continue
        cache = out / "reference_cache" / (name if a.private_cache else base)
        run.stage(
            f"fit_{name}",
            [
                "fit",
                "-c",
                ALIGN_CFG,
                *data,
                "--data.train_file",
                str(files[a.align_data]),
                "--trainer.default_root_dir",
                str(runs / name),
                "--model.source.init_adapter",
                str(sft_adapter),
                "--model.objective.name",
                objective,
                "--model.objective.num_negatives",
                str(k),
                "--model.objective.beta",
                str(beta),
                "--model.optim.learning_rate",
                str(lr),
                "--model.scoring.reference_cache_dir",
                str(cache),
                *extra,
            ],
        )
        test(name, ALIGN_CFG, method, runs / name / "export")
    if not a.dry_run:
        save_timings(run)
    return 0


def switch(
    a: argparse.Namespace, run: Runner, runs: Path, fit_data: list[str], wanted, test
) -> None:
    """The ``SWITCH`` runs: export the SFT at epoch ``SWITCH_EPOCH`` (and test it), then resume
    the SFT run there with each objective up to its last epoch."""
    names = [f"sft_e6.{n}" for n, *_ in SWITCH]
    start = f"sft_e6_ep{SWITCH_EPOCH}"
    if not any(wanted(n) for n in [start, *names]):
        return
    state = None if a.dry_run else resume_state(runs / "sft_e6" / "epochs", SWITCH_EPOCH)
    if state is None and not a.dry_run:
        print(
            f"[wait] {start}: needs {runs / 'sft_e6' / 'epochs'}/epoch={SWITCH_EPOCH - 1}-step=*.ckpt "
            "(the checkpoints of fit_sft_e6 run by this script, not seeded with --base-adapter)"
        )
        return
    resume = ["--ckpt_path", str(state)]
    # the ended epoch's export: a fit resumed at its end with max_epochs there trains nothing
    run.stage(
        f"fit_{start}",
        [
            "fit",
            "-c",
            SFT_CFG,
            *fit_data,
            "--trainer.default_root_dir",
            str(runs / start),
            "--trainer.max_epochs",
            str(SWITCH_EPOCH),
            *resume,
        ],
    )
    if wanted(start):
        test(start, SFT_CFG, f"SFT (epoch {SWITCH_EPOCH} of 6)", runs / start / "export")
    sft = yaml.safe_load((REPO / SFT_CFG).read_text())["model"]["optim"]
    schedule = [
        f"--model.optim.{k}={sft[k]}"
        for k in ("learning_rate", "warmup_steps", "min_lr_ratio", "weight_decay")
    ]
    for (_short, method, objective, k, beta, extra), name in zip(SWITCH, names, strict=False):
        if not wanted(name) or (not a.dry_run and not (run.out / "done" / f"fit_{start}").exists()):
            continue
        run.stage(
            f"fit_{name}",
            [
                "fit",
                "-c",
                ALIGN_CFG,
                *fit_data,
                "--trainer.default_root_dir",
                str(runs / name),
                "--model.source.init_adapter",
                str(runs / start / "export"),
                "--model.objective.name",
                objective,
                "--model.objective.num_negatives",
                str(k),
                "--model.objective.beta",
                str(beta),
                *schedule,
                *SFT_RUNS["sft_e6"],
                "--model.scoring.reference_cache_dir",
                str(run.out / "reference_cache" / name),
                *resume,
                *extra,
            ],
        )
        test(name, ALIGN_CFG, method, runs / name / "export")


def render(last: str | None = None) -> int:
    """Print the Table-1-shaped comparison of every collected run: the non-neural and the
    sequential baselines (seed 0), then the LM runs; ``last`` (a run name) goes last and
    gets the Rel.Ipv column with paired p-values against every other row."""
    from sdpo_lightning.evaluation.report import comparison_table

    order = (
        [f"baselines/{b}" for b in ("random", "most_popular", "item_knn")]
        + [f"baselines/{m}_lastfm/seed0" for m in ("gru4rec", "caser", "sasrec")]
        + [base for base in SFT_RUNS]
        + [n if base == "sft" else f"{base}.{n}" for base in SFT_RUNS for n, *_ in ALIGN]
        + [f"{base}.{n}_sel" for base in SFT_RUNS for n, *_ in ALIGN]
        + [f"sft_e6_ep{SWITCH_EPOCH}"]
        + [f"sft_e6.{n}" for n, *_ in SWITCH]
    )
    if last:
        order = [n for n in order if n != last] + [last]
    have = [n for n in order if (RESULTS / n / "summary.json").is_file()]
    print(
        comparison_table(
            [str(RESULTS / n / "summary.json") for n in have], baseline_last=bool(last)
        )
    )
    print()
    print(detail_table(have))
    print()
    print(pairs_table(have))
    print()
    print(pooled_table(have))
    if last:
        print()
        print(paired_table(last, [n for n in have if n != last]))
    return 0


def _deltas(mine: dict, theirs: dict) -> tuple[int, list[str]]:
    """Rows both cover and the paired-bootstrap 95% intervals (10,000 resamples, seed 0) of the
    generation and ranking HR@1 differences ``mine - theirs`` (``hits_by_index`` maps)."""
    from sdpo_lightning.evaluation.bootstrap import paired_bootstrap_ci

    idx = sorted(set(mine) & set(theirs))
    cells = []
    for j in (0, 1):  # generation, ranking
        d, lo, hi = paired_bootstrap_ci(
            [mine[i][j] for i in idx], [theirs[i][j] for i in idx], n_boot=10_000, seed=0
        )
        cells.append(f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    return len(idx), cells


@functools.cache
def _hits(name: str) -> dict:
    """A run's per-example hits, each predictions file read once."""
    from sdpo_lightning.evaluation.report import hits_by_index

    return hits_by_index(RESULTS / name / "predictions.jsonl")  # or its compact .gz


def has_predictions(name: str) -> bool:
    """Whether run ``name`` has a predictions file (plain or compact) under ``RESULTS``."""
    from sdpo_lightning.evaluation.report import find_predictions

    return find_predictions(RESULTS / name / "predictions.jsonl") is not None


def paired_table(last: str, others: list[str]) -> str:
    """Paired-bootstrap 95% intervals of ``last`` minus each other run, on the rows both cover,
    for generation and ranking HR@1."""
    lines = [
        f"| `{last}` minus | rows | gen HR@1 Δ [95% CI] | rank HR@1 Δ [95% CI] |",
        "|:---|---:|---:|---:|",
    ]
    for n in others:
        if has_predictions(n):
            rows, cells = _deltas(_hits(last), _hits(n))
            lines.append(f"| `{n}` | {rows} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def pairs_table(have: list[str], base: str = "sft_e6") -> str:
    """Each alignment run minus the SFT it starts from and minus its "SFT continued" control
    (``CONTROL``: same rows, epochs and lr), generation and ranking HR@1 (see ``_deltas``), and
    the discordant rows of generation against the control: hits of the run only / the control only."""
    lines = [
        f"| run | its control | gen Δ vs `{base}` | rank Δ vs `{base}` | gen Δ vs control | rank Δ vs control "
        "| gen discordant (run / control) |",
        "|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for run in have:
        short = run.removeprefix(f"{base}.")
        control = _control_of(run, base)
        if control is None:
            continue  # not an alignment run of base, or an SFT-continued control itself
        cells = [
            c
            for other in (base, control)
            for c in (
                _deltas(_hits(run), _hits(other))[1] if other in have else ["not run", "not run"]
            )
        ]
        if control in have:
            mine, theirs = _hits(run), _hits(control)
            only = [
                sum(1 for i in mine.keys() & theirs.keys() if a[i][0] and not b[i][0])
                for a, b in ((mine, theirs), (theirs, mine))
            ]
            cells.append(f"{only[0]} / {only[1]}")
        else:
            cells.append("not run")
        lines.append(
            f"| `{short}` | `{control.removeprefix(base + '.')}` | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _control_of(run: str, base: str = "sft_e6") -> str | None:
    """The run name of ``run``'s "SFT continued" control (``CONTROL``; ``_sel`` runs have
    ``_sel`` controls), or None if ``run`` is no alignment run of ``base`` or is a control."""
    short = run.removeprefix(f"{base}.")
    control = CONTROL.get(short.removesuffix("_sel"))
    if run == short or control is None:
        return None
    return (
        control
        if control == base
        else f"{base}.{control}" + ("_sel" if short.endswith("_sel") else "")
    )


def pooled(pairs: list[tuple[dict, dict]], protocol: int) -> tuple[int, float, float, float, float]:
    """All (run, control) pairs at once, on the rows every one covers: per row, the mean hit
    of the runs minus the mean hit of their controls, with its paired-bootstrap 95% interval
    (10,000 resamples of rows, seed 0: the pairs share their test rows and start, so the rows,
    not the settings, are the independent unit), and the median over pairs of one pair's
    minimum detectable difference (80% power, two-sided 5%: 2.8 standard errors).

    Args:
        pairs: ``(run hits, control hits)``, each ``hits_by_index`` (index → (gen, rank)).
        protocol: 0 generation, 1 ranking.

    Returns:
        ``(rows, delta, lo, hi, mde)``.
    """
    import numpy as np

    from sdpo_lightning.evaluation.bootstrap import paired_bootstrap_ci

    idx = sorted(set.intersection(*(set(r) & set(c) for r, c in pairs)))
    runs = np.array([[float(r[i][protocol]) for i in idx] for r, _ in pairs])  # (P, N)
    ctrl = np.array([[float(c[i][protocol]) for i in idx] for _, c in pairs])  # (P, N)
    delta, lo, hi = paired_bootstrap_ci(runs.mean(0), ctrl.mean(0), n_boot=10_000, seed=0)
    d = runs - ctrl  # (P, N)
    mde = float(np.median(2.8 * d.std(axis=1, ddof=1) / np.sqrt(len(idx))))
    return len(idx), delta, lo, hi, mde


def pooled_table(have: list[str], base: str = "sft_e6") -> str:
    """``pooled`` per objective: every S-DPO run (and every DPO / DPO-K run) against its own
    "SFT continued" control, HR@1 of both protocols."""
    objective = {**{n: o for n, _, o, *_ in ALIGN}, **{n: o for n, _, o, *_ in SWITCH}}
    groups: dict[str, list[tuple[dict, dict]]] = {}
    for run in have:
        control = _control_of(run, base)
        if control in have:
            obj = objective[run.removeprefix(f"{base}.").removesuffix("_sel")]
            groups.setdefault(obj, []).append((_hits(run), _hits(control)))
    lines = [
        "| objective | pairs | rows | gen Δ vs control, pooled [95% CI] | rank Δ vs control, pooled [95% CI] "
        "| one pair's detectable Δ (gen / rank) |",
        "|:---|---:|---:|---:|---:|---:|",
    ]
    for obj in ("sdpo", "dpo", "dpo_k"):
        if obj in groups:
            (n, *g), (_, *r) = pooled(groups[obj], 0), pooled(groups[obj], 1)
            lines.append(
                f"| {obj} | {len(groups[obj])} | {n} | {g[0]:+.4f} [{g[1]:+.4f}, {g[2]:+.4f}] "
                f"| {r[0]:+.4f} [{r[1]:+.4f}, {r[2]:+.4f}] | {g[3]:.3f} / {r[3]:.3f} |"
            )
    return "\n".join(lines)


def detail_table(names: list[str], timings: dict[str, float] | None = None) -> str:
    """Both protocols with bootstrap intervals, and the stage wall times (``timings``: stage →
    seconds, ``fit_<run>`` / ``test_<run>``; default ``results/timings.json``), one row per run."""
    timings_path = RESULTS / "timings.json"
    if timings is None:
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def cell(m: dict) -> str:
        return f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"

    lines = [
        "| method | run | gen HR@1 [95% CI] | ValidRatio | rank HR@1 [95% CI] | rank MRR | fit s | test s |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        summ = json.loads((RESULTS / n / "summary.json").read_text())
        g, r = summ["protocols"].get("generation"), summ["protocols"]["ranking"]
        gen = [cell(g["hr@1"]), f"{g['valid_ratio']['value']:.4f}"] if g else ["—", "—"]
        secs = [f"{timings[k]:.0f}" if k in timings else "—" for k in (f"fit_{n}", f"test_{n}")]
        cells = [summ["method"], f"`{n}`", *gen, cell(r["hr@1"]), f"{r['mrr']['value']:.4f}", *secs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
