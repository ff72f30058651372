"""Is the demo's claim robust? The demo over seeds × CPU kernel settings, one table.

Runs ``python -m sdpo_lightning.demo --seed S`` for every seed and kernel setting, each in
its own directory under ``--out`` (resumable: a run whose ``results.txt`` exists is read,
not rerun; ``--jobs`` runs at a time, one thread each), then prints per run the SFT and
S-DPO HR@1 on both protocols and the paired-bootstrap S-DPO − SFT differences, and whether
both intervals lie above 0.

With ``--control`` each run also trains the equal-compute control, *SFT continued*: the
S-DPO stage's config (same LoRA, learning rate, epochs and rows) with ``objective: sft``,
and prints S-DPO − SFT continued beside S-DPO − SFT: what the objective adds beyond the
extra training, and then, for the first run that has the control, HR@1 by kind of test row
(:func:`breakdown`): where the gain comes from.

Kernel settings (``--settings``):

* ``pinned``: the demo's default, every kernel path pinned (``sdpo_lightning.kernels``);
* ``default`` / ``avx2`` / ``avx512``: native libraries with ATen's CPU capability forced
  (``ATEN_CPU_CAPABILITY``); a capability the CPU lacks is skipped.

    python benchmarks/demo_robustness.py --seeds 0 1 2 3 4 --out /tmp/demo_robustness
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("pinned", "default", "avx2", "avx512")


def cpu_has(setting: str) -> bool:
    """Whether this CPU can run ATen's ``setting`` capability (``pinned``/``default``: always)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    need = {"avx2": " avx2", "avx512": " avx512bw"}.get(setting)
    return need is None or need in flags


def _env(setting: str) -> dict[str, str]:
    from sdpo_lightning.kernels import PINNED

    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    env.update(
        PINNED if setting == "pinned" else {"ATEN_CPU_CAPABILITY": setting, "OMP_NUM_THREADS": "1"}
    )
    return env


def _call(cmd: list[str], work: Path, env: dict[str, str], log_name: str) -> None:
    with open(work / log_name, "w") as log:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: see {work / log_name}")


def run_one(
    out: Path,
    setting: str,
    seed: int,
    extra: list[str],
    configs: Path = REPO / "configs",
    control: bool = False,
) -> Path:
    """Run (or reuse) one demo, and with ``control`` its SFT-continued run; returns the
    demo's ``runs/quickstart`` directory."""
    work = out / f"{setting}_seed{seed}"
    root = work / "runs" / "quickstart"
    env = _env(setting)
    if not (root / "results.txt").is_file():
        work.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "sdpo_lightning.demo",
            "--configs",
            str(configs),
            "--seed",
            str(seed),
            *(["--kernels", "native"] if setting != "pinned" else []),
            *extra,
        ]
        _call(cmd, work, env, "demo.log")
    if control and not (root / "sft_cont" / "summary.json").is_file():
        cfg, run = str(configs / "quickstart_sdpo.yaml"), "runs/quickstart/sft_cont"
        common = [
            "-c",
            cfg,
            f"--seed_everything={seed}",
            f"--trainer.default_root_dir={run}",
            *extra,
        ]
        _call(
            [sys.executable, "-m", "sdpo_lightning", "fit", *common, "--model.objective.name=sft"],
            work,
            env,
            "sft_cont_fit.log",
        )
        _call(
            [
                sys.executable,
                "-m",
                "sdpo_lightning",
                "test",
                *common,
                "--model.objective.name=sft",
                f"--model.source.init_adapter={run}/export",
                "--model.output.method=SFT continued",
            ],
            work,
            env,
            "sft_cont_test.log",
        )
    return root


def results(root: Path) -> dict:
    """SFT and S-DPO HR@1 (gen, rank) from their summaries, the paired S-DPO − SFT deltas per
    protocol, and, where SFT continued was run, S-DPO − SFT continued (``control``)."""
    from sdpo_lightning.demo import PROTOCOLS, paired_deltas

    def hr1(run: str) -> tuple[float, ...]:
        protocols = json.loads((root / run / "summary.json").read_text())["protocols"]
        return tuple(protocols[p]["hr@1"]["value"] for p in PROTOCOLS)

    out = {"SFT": hr1("sft"), "S-DPO": hr1("sdpo"), **paired_deltas(root / "sdpo", root / "sft")}
    if (root / "sft_cont" / "predictions.jsonl").is_file():
        out["control"] = paired_deltas(root / "sdpo", root / "sft_cont")
    return out


#: kinds of test rows in :func:`breakdown`, by what the target is
ROW_KINDS = {
    ("successor", False): "target = successor of the last item, no other candidate of its category",
    ("successor", True): "target = successor, another candidate of the category",
    ("same category", False): "target = another item of the category, none other in the list",
    (
        "same category",
        True,
    ): "target = another item of the category, another candidate of the category",
    ("fresh", False): "target from a fresh category",
}


def breakdown(root: Path) -> str:
    """HR@1 (generation / ranking) of SFT, SFT continued and S-DPO by kind of test row: is the
    target the last history item's successor, another item of its category, or a fresh draw,
    and does another candidate share the last item's category (the generator's hidden
    catalogue, ``data/items.json``, tells)."""
    items = {d["title"]: d for d in json.loads((root / "data" / "items.json").read_text())}
    rows = json.loads((root / "data" / "test.json").read_text())
    runs = {"SFT": "sft", "SFT continued": "sft_cont", "S-DPO": "sdpo"}
    preds = {}
    for name, run in runs.items():
        with open(root / run / "predictions.jsonl") as f:
            preds[name] = {r["index"]: r for r in map(json.loads, f)}
    counts: dict[tuple, list[int]] = {k: [0] * (1 + 2 * len(runs)) for k in ROW_KINDS}
    for i, row in enumerate(rows):
        target, last = items[row["trueSelection"]], items[row["historyList"][-1]]
        same = target["category"] == last["category"]
        kind = (
            "successor"
            if last["successor"] == target["item_id"]
            else "same category"
            if same
            else "fresh"
        )
        others = sum(items[t]["category"] == last["category"] for t in row["itemList"]) - same
        cell = counts[(kind, bool(others) and kind != "fresh")]
        cell[0] += 1
        for j, name in enumerate(runs):
            cell[1 + 2 * j] += bool(preds[name][i]["correct"])
            cell[2 + 2 * j] += preds[name][i]["target_rank"] == 1
    lines = [
        "| test rows | n | " + " | ".join(f"{n} gen / rank" for n in runs) + " |",
        "|:--|--:|" + "--:|" * len(runs),
    ]
    for key, label in ROW_KINDS.items():
        n, *hits = counts[key]
        cells = " | ".join(
            f"{hits[2 * j] / n:.3f} / {hits[2 * j + 1] / n:.3f}" if n else "—"
            for j in range(len(runs))
        )
        lines.append(f"| {label} | {n} | {cells} |")
    return "\n".join(lines)


def _ci(t: tuple[float, ...]) -> str:
    return f"{t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}]"


def table(results: dict[tuple[str, int], dict]) -> str:
    """Markdown table, one row per (setting, seed), then the count of robust rows."""
    has_control = any("control" in r for r in results.values())
    head = (
        "| kernels | seed | SFT gen / rank HR@1 | S-DPO gen / rank HR@1 | Δ gen HR@1 [95% CI] "
        "| Δ rank HR@1 [95% CI] | both > 0 |"
    )
    rule = "|:--|--:|--:|--:|--:|--:|:--:|"
    if has_control:
        head += " S-DPO − SFT continued: Δ gen | Δ rank |"
        rule += "--:|--:|"
    lines, ok = [head, rule], 0
    for (setting, seed), r in results.items():
        g, k = r["generation"], r["ranking"]
        both = g[1] > 0 and k[1] > 0
        ok += both
        line = (
            f"| {setting} | {seed} | {r['SFT'][0]:.4f} / {r['SFT'][1]:.4f} "
            f"| {r['S-DPO'][0]:.4f} / {r['S-DPO'][1]:.4f} | {_ci(g)} | {_ci(k)} | {'yes' if both else 'no'} |"
        )
        if has_control:
            c = r.get("control")
            line += f" {_ci(c['generation'])} | {_ci(c['ranking'])} |" if c else " — | — |"
        lines.append(line)
    lines.append(f"\n{ok} of {len(results)} runs have both paired S-DPO − SFT intervals above 0.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("runs/demo_robustness"))
    parser.add_argument("--jobs", type=int, default=2, help="demos run at a time (one thread each)")
    parser.add_argument(
        "--control",
        action="store_true",
        help="also train and test SFT continued (the equal-compute control)",
    )
    parser.add_argument(
        "--configs",
        type=Path,
        default=REPO / "configs",
        help="directory of the quickstart YAML files (a variant of the demo's design)",
    )
    args, extra = parser.parse_known_args(argv)
    todo = [(s, seed) for s in args.settings if cpu_has(s) for seed in args.seeds]
    skipped = [s for s in args.settings if not cpu_has(s)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        roots = dict(
            zip(
                todo,
                pool.map(lambda t: run_one(args.out, *t, extra, args.configs, args.control), todo),
                strict=False,
            )
        )
    print(table({key: results(root) for key, root in roots.items()}))
    with_control = [
        (key, root)
        for key, root in roots.items()
        if (root / "sft_cont" / "predictions.jsonl").is_file()
    ]
    if with_control:
        (setting, seed), root = with_control[0]
        print(f"\nHR@1 by kind of test row, {setting} seed {seed}:\n{breakdown(root)}")
    if skipped:
        print(f"Skipped (this CPU lacks them): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
