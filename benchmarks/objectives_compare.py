"""Every preference objective from the same SFT model, at equal extra compute, on the demo task.

For each seed, the demo (``benchmarks/demo_robustness.py``: data, SFT, S-DPO, and the
equal-compute control *SFT continued*) is run or reused, then every other objective trains
the same alignment stage from the same SFT export — the quickstart S-DPO config (LoRA, one
epoch, same rows, learning rate, β), only ``model.objective.name`` (and K = 1 for the
pairwise objectives) changed — and is tested on the same rows. The table gives, per seed and
pooled over seeds, each objective's HR@1 on both protocols and its paired-bootstrap
difference against SFT continued (the pooled interval resamples the rows of all seeds).

The objectives run with the S-DPO stage's settings (β = 1; SimPO's γ = 0.5), untuned: this is
a comparison at one shared setting, not of each objective at its best.

    python benchmarks/objectives_compare.py --seeds 0 1 2 --setting avx512 --out /tmp/demo_robustness
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_robustness import REPO, SETTINGS, _call, _env, cpu_has, run_one  # noqa: E402

#: objective → number of negatives (K); the demo's S-DPO stage itself is the ``sdpo`` row
OBJECTIVES: dict[str, int] = {
    "sdpo": 4,
    "dpo": 1,
    "dpo_k": 4,
    "dmpo": 4,
    "ipo": 1,
    "ipo_k": 4,
    "simpo": 1,
    "softmax_simpo": 4,
    "dynamicpo": 4,
}
N_BOOT = 10_000


def run_objective(
    root: Path, work: Path, setting: str, seed: int, name: str, k: int, configs: Path
) -> Path:
    """Train and test one objective from the seed's SFT export; returns its run directory."""
    if name == "sdpo":
        return root / "sdpo"
    run = f"runs/quickstart/obj_{name}"
    if not (work / run / "summary.json").is_file():
        common = [
            "-c",
            str(configs / "quickstart_sdpo.yaml"),
            f"--seed_everything={seed}",
            f"--trainer.default_root_dir={run}",
            f"--model.objective.name={name}",
            f"--model.objective.num_negatives={k}",
        ]
        env = _env(setting)
        _call(
            [sys.executable, "-m", "sdpo_lightning", "fit", *common],
            work,
            env,
            f"obj_{name}_fit.log",
        )
        _call(
            [
                sys.executable,
                "-m",
                "sdpo_lightning",
                "test",
                *common,
                f"--model.source.init_adapter={run}/export",
                f"--model.output.method={name}",
            ],
            work,
            env,
            f"obj_{name}_test.log",
        )
    return work / run


def hits(run: Path) -> np.ndarray:
    """``(2, N)`` 0/1 hits per test row: generation, ranking (rows in test-file order)."""
    from sdpo_lightning.demo import hits as demo_hits

    return np.asarray(demo_hits(run), dtype=float)


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of ``a - b`` over rows with a paired percentile-bootstrap 95% interval."""
    from sdpo_lightning.evaluation.bootstrap import paired_bootstrap_ci

    return paired_bootstrap_ci(a, b, n_boot=N_BOOT, seed=0)


def _ci(t: tuple[float, float, float]) -> str:
    return f"{t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}]"


def table(runs: dict[int, dict[str, Path]]) -> str:
    """Markdown: per objective and seed, then pooled, HR@1 and Δ against SFT continued."""
    lines = [
        "| objective | K | seed | gen HR@1 | rank HR@1 | Δ gen vs SFT continued [95% CI] "
        "| Δ rank vs SFT continued [95% CI] |",
        "|:--|--:|:--|--:|--:|--:|--:|",
    ]
    names = ["SFT", "SFT continued", *OBJECTIVES]
    for name in names:
        per_seed = []
        for seed, by_name in runs.items():
            h, c = hits(by_name[name]), hits(by_name["SFT continued"])
            per_seed.append((h, c))
            k = OBJECTIVES.get(name, "—")
            if name == "SFT continued":
                d = "—", "—"
            else:
                d = _ci(paired(h[0], c[0])), _ci(paired(h[1], c[1]))
            lines.append(
                f"| {name} | {k} | {seed} | {h[0].mean():.4f} | {h[1].mean():.4f} | {d[0]} | {d[1]} |"
            )
        if name != "SFT continued" and len(per_seed) > 1:
            h = np.concatenate([p[0] for p in per_seed], axis=1)
            c = np.concatenate([p[1] for p in per_seed], axis=1)
            lines.append(
                f"| **{name}** | {OBJECTIVES.get(name, '—')} | pooled | {h[0].mean():.4f} "
                f"| {h[1].mean():.4f} | {_ci(paired(h[0], c[0]))} | {_ci(paired(h[1], c[1]))} |"
            )
    if len(runs) > 1:  # which objectives differ from S-DPO, pooled over the seeds
        lines += [
            "",
            "| objective | K | Δ gen vs sdpo, pooled [95% CI] | Δ rank vs sdpo, pooled [95% CI] |",
            "|:--|--:|--:|--:|",
        ]
        for name in OBJECTIVES:
            if name == "sdpo":
                continue
            h = np.concatenate([hits(by_name[name]) for by_name in runs.values()], axis=1)
            s = np.concatenate([hits(by_name["sdpo"]) for by_name in runs.values()], axis=1)
            lines.append(
                f"| {name} | {OBJECTIVES[name]} | {_ci(paired(h[0], s[0]))} | {_ci(paired(h[1], s[1]))} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--setting", choices=SETTINGS, default="pinned")
    parser.add_argument("--out", type=Path, default=Path("runs/demo_robustness"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--configs", type=Path, default=REPO / "configs")
    args = parser.parse_args(argv)
    if not cpu_has(args.setting):
        parser.error(f"this CPU cannot run ATen's {args.setting} kernels")
    roots = {
        seed: run_one(args.out, args.setting, seed, [], args.configs, control=True)
        for seed in args.seeds
    }
    todo = [(seed, name, k) for seed in args.seeds for name, k in OBJECTIVES.items()]

    def one(t: tuple[int, str, int]) -> Path:
        seed, name, k = t
        return run_objective(
            roots[seed], roots[seed].parents[1], args.setting, seed, name, k, args.configs
        )

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = dict(zip(todo, pool.map(one, todo), strict=False))
    runs = {
        seed: {
            "SFT": roots[seed] / "sft",
            "SFT continued": roots[seed] / "sft_cont",
            **{name: done[(seed, name, k)] for name, k in OBJECTIVES.items()},
        }
        for seed in args.seeds
    }
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
