"""The embedded default (``make demo``): synthetic data → tiny LLaMA → SFT → S-DPO → test.

No network: the catalogue, users and interaction sequences are generated from a seed
(settings in ``configs/quickstart_data.yaml``), the tokenizer is trained offline on the
catalogue, and the model is a tiny LLaMA built from a config. Stages run through the same
``sdpo`` CLI and YAML configs a user would run:

1. ``python -m sdpo_lightning.data.synthetic --out runs/quickstart/data --config configs/quickstart_data.yaml``
2. ``sdpo fit  -c configs/quickstart_sft.yaml``   (full fine-tuning; exports the model)
3. ``sdpo test -c configs/quickstart_sft.yaml --model.source.model_name_or_path runs/quickstart/sft/export``
4. ``sdpo fit  -c configs/quickstart_sdpo.yaml``  (LoRA on the SFT model; reference = SFT)
5. ``sdpo test -c configs/quickstart_sdpo.yaml --model.source.init_adapter runs/quickstart/sdpo/export``

then scores the same test rows with three non-neural baselines (random, most popular, and
the generator's own rule, which knows the hidden successor cycles) and prints one table
with bootstrap intervals, plus the paired-bootstrap interval of S-DPO − SFT on both
protocols. Every run directory holds ``summary.json`` and ``predictions.jsonl``
(``sdpo-report`` takes them); ``sdpo-plots runs/quickstart --out runs/quickstart/figures``
draws the reward curves. The results block is also written to ``runs/quickstart/results.txt``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sdpo_lightning.baselines import prediction_records, run_baseline
from sdpo_lightning.baselines.base import Scorer
from sdpo_lightning.baselines.runner import write_report
from sdpo_lightning.cli import cli_main
from sdpo_lightning.data.readers import load_examples
from sdpo_lightning.data.records import Example
from sdpo_lightning.data.synthetic import main as make_synthetic
from sdpo_lightning.data.synthetic import rule_scores
from sdpo_lightning.evaluation.bootstrap import paired_bootstrap_ci
from sdpo_lightning.evaluation.report import hits_by_index
from sdpo_lightning.kernels import describe, reexec_pinned

N_BOOT_PAIRED = 10_000
#: the two protocols of the demo, in the order of :func:`hits`
PROTOCOLS = ("generation", "ranking")


class GeneratorRule(Scorer):
    """The synthetic generator's own rule (:func:`~sdpo_lightning.data.synthetic.rule_scores`):
    successor of the last item, then its category. It reads the hidden catalogue, so it is a
    ceiling hint, not a fair baseline."""

    name, method = "generator_rule", "generator rule"

    def __init__(self, items: Sequence[dict], seed: int = 0) -> None:
        super().__init__(seed)
        self.items = list(items)

    def fit(self, train_examples: Sequence[Example]) -> GeneratorRule:
        self.fitted = True
        return self

    def _score(self, example: Example) -> list[float]:
        return rule_scores(example.history, example.candidates, self.items)


def _stage(title: str, args: list[str]) -> float:
    print(f"\n=== {title}: sdpo {' '.join(args)}", flush=True)
    start = time.perf_counter()
    cli_main(args)
    return time.perf_counter() - start


def _baselines(root: Path) -> tuple[dict[str, Path], int]:
    """Score the test rows with the baselines; returns ``{label: run dir}`` and the number
    of candidates per test row."""
    data = root / "data"
    train = load_examples(data / "train.json").examples
    test = load_examples(data / "test.json").examples
    runs = {}
    for name, label in (("random", "random"), ("most_popular", "most popular")):
        out = root / "baselines" / name
        run_baseline(
            name,
            train,
            test,
            out,
            seed=0,
            dataset="synthetic",
            meta={"data_file": str(data / "test.json")},
        )
        runs[label] = out
    out = root / "baselines" / "generator_rule"
    scorer = GeneratorRule(json.loads((data / "items.json").read_text())).fit(train)
    write_report(
        prediction_records(scorer, test),
        out,
        {
            "run": "generator_rule",
            "method": scorer.method,
            "dataset": "synthetic",
            "model": "baseline:generator_rule",
        },
    )
    runs["generator rule"] = out
    return runs, len(test[0].candidates)


def hits(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-example generation and ranking hits, ordered by example index."""
    by_index = hits_by_index(run_dir / "predictions.jsonl")
    gen, rank = zip(*(by_index[i] for i in sorted(by_index)), strict=False)
    return np.array(gen), np.array(rank)


def paired_deltas(run: Path, base: Path) -> dict[str, tuple[float, float, float]]:
    """``run`` − ``base`` HR@1 on the same rows per protocol: (delta, low, high) of a paired
    bootstrap (:data:`N_BOOT_PAIRED` resamples, seed 0)."""
    a, b = hits(run), hits(base)
    return {
        p: paired_bootstrap_ci(a[i], b[i], n_boot=N_BOOT_PAIRED, seed=0)
        for i, p in enumerate(PROTOCOLS)
    }


def results_table(runs: dict[str, Path], n_candidates: int) -> str:
    """The results block: one row per run with bootstrap intervals, then S-DPO − SFT paired."""
    summaries = {k: json.loads((d / "summary.json").read_text()) for k, d in runs.items()}
    n = next(iter(summaries.values()))["n_examples"]
    lines = [
        f"Quick start results: synthetic test split, {n} rows, {n_candidates} candidates "
        f"(chance HR@1 {1 / n_candidates:.4f})",
        f"{'method':15} {'gen HR@1 [95% CI]':>24} {'ValidRatio':>10} {'rank HR@1 [95% CI]':>24} {'MRR':>7}",
    ]

    def cell(m: dict) -> str:
        return f"{m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"

    for name, s in summaries.items():
        g, r = s["protocols"]["generation"], s["protocols"]["ranking"]
        lines.append(
            f"{name:15} {cell(g['hr@1']):>24} {g['valid_ratio']['value']:>10.4f} "
            f"{cell(r['hr@1']):>24} {r['mrr']['value']:>7.4f}"
        )
    deltas = paired_deltas(runs["S-DPO"], runs["SFT"])
    lines.append(
        f"S-DPO - SFT on the same rows, paired bootstrap 95% ({N_BOOT_PAIRED} resamples, seed 0):"
    )
    for protocol in PROTOCOLS:
        d, lo, hi = deltas[protocol]
        lines.append(f"  {protocol + ' HR@1':16} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    lines.append(
        "Baselines: gen HR@1 is their top-scored candidate. Models: greedy generation "
        "constrained to the candidates; rank = completion log-likelihood."
    )
    return "\n".join(lines)


def run(
    root: str = "runs/quickstart",
    configs: str = "configs",
    extra: list[str] | None = None,
    seed: int | None = None,
) -> str:
    """Run the whole demo; returns the printed results block.

    Args:
        root: Output directory (the quickstart configs read ``runs/quickstart/data``).
        configs: Directory of the quickstart YAML files.
        extra: Arguments appended to every ``sdpo`` stage.
        seed: If given, the seed of the data generator and of both training stages
            (otherwise the configs' seeds: 0).
    """
    # one intra-op thread: a 2-layer model gains nothing from more (it lost to OpenMP
    # overhead on 2 cores), and float reductions then run in the same order on every
    # machine, so the printed numbers do not depend on its core count
    torch.set_num_threads(1)
    rootp, extra = Path(root), list(extra or [])
    sft_cfg, sdpo_cfg = f"{configs}/quickstart_sft.yaml", f"{configs}/quickstart_sdpo.yaml"
    if seed is not None:
        extra = [f"--seed_everything={seed}", *extra]
    times = {}
    if not (rootp / "data" / "tokenizer" / "tokenizer.json").is_file():
        make_synthetic(
            [
                "--out",
                str(rootp / "data"),
                "--config",
                f"{configs}/quickstart_data.yaml",
                *([] if seed is None else ["--seed", str(seed)]),
            ]
        )
    times["sft fit"] = _stage("SFT", ["fit", "-c", sft_cfg, *extra])
    times["sft test"] = _stage(
        "test SFT",
        [
            "test",
            "-c",
            sft_cfg,
            "--model.source.model_name_or_path",
            f"{root}/sft/export",
            "--model.output.method",
            "SFT",
            "--trainer.default_root_dir",
            f"{root}/sft",
            *extra,
        ],
    )
    times["sdpo fit"] = _stage("S-DPO", ["fit", "-c", sdpo_cfg, *extra])
    times["sdpo test"] = _stage(
        "test S-DPO",
        [
            "test",
            "-c",
            sdpo_cfg,
            "--model.source.init_adapter",
            f"{root}/sdpo/export",
            "--model.output.method",
            "S-DPO",
            "--trainer.default_root_dir",
            f"{root}/sdpo",
            *extra,
        ],
    )
    start = time.perf_counter()
    runs, n_candidates = _baselines(rootp)
    runs.update({"SFT": rootp / "sft", "S-DPO": rootp / "sdpo"})
    times["baselines"] = time.perf_counter() - start
    block = results_table(runs, n_candidates)
    (rootp / "results.txt").write_text(block + "\n")
    print("\n=== results\n" + block)
    print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", default="configs", help="directory of the quickstart YAML files"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the data and of both stages (default: the configs' seed, 0)",
    )
    parser.add_argument(
        "--kernels",
        choices=("pinned", "native"),
        default="pinned",
        help="pinned: portable CPU kernel paths, the same numbers on every x86-64 "
        "machine (the README's block); native: each library's fastest path",
    )
    args, extra = parser.parse_known_args(argv)
    reexec_pinned(args.kernels)  # before any float is computed; restarts the process if needed
    print(describe(), flush=True)
    run(
        "runs/quickstart", args.configs, extra, seed=args.seed
    )  # the configs read runs/quickstart/data
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
