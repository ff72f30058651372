"""Is the demo's claim robust? The demo over seeds × CPU kernel settings, one table.

Runs ``python -m sdpo_lightning.demo --seed S`` for every seed and kernel setting, each in
its own directory under ``--out`` (resumable: a run whose ``results.txt`` exists is read,
not rerun; ``--jobs`` runs at a time, one thread each), then prints per run the SFT and
S-DPO HR@1 on both protocols and the paired-bootstrap S-DPO − SFT differences, and whether
both intervals lie above 0.

Kernel settings (``--settings``):

* ``pinned``: the demo's default, every kernel path pinned (``sdpo_lightning.kernels``);
* ``default`` / ``avx2`` / ``avx512``: native libraries with ATen's CPU capability forced
  (``ATEN_CPU_CAPABILITY``); a capability the CPU lacks is skipped.

    python benchmarks/demo_robustness.py --seeds 0 1 2 3 4 --out /tmp/demo_robustness
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("pinned", "default", "avx2", "avx512")
_PAIRED = re.compile(r"^\s+(generation|ranking) HR@1\s+([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\]$", re.M)
_ROW = re.compile(r"^(SFT|S-DPO)\s+([\d.]+) \[[^]]*\]\s+[\d.]+\s+([\d.]+) \[", re.M)


def cpu_has(setting: str) -> bool:
    """Whether this CPU can run ATen's ``setting`` capability (``pinned``/``default``: always)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    need = {"avx2": " avx2", "avx512": " avx512bw"}.get(setting)
    return need is None or need in flags


def run_one(out: Path, setting: str, seed: int, extra: list[str], configs: Path = REPO / "configs") -> Path:
    """Run (or reuse) one demo; returns its ``results.txt``."""
    work = out / f"{setting}_seed{seed}"
    result = work / "runs" / "quickstart" / "results.txt"
    if result.is_file():
        return result
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "sdpo_lightning.demo", "--configs", str(configs),
           "--seed", str(seed), *extra]
    if setting != "pinned":
        env.update(ATEN_CPU_CAPABILITY=setting, OMP_NUM_THREADS="1")
        cmd += ["--kernels", "native"]
    with open(work / "demo.log", "w") as log:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"demo failed ({setting}, seed {seed}): see {work / 'demo.log'}")
    return result


def parse(block: str) -> dict[str, tuple[float, ...]]:
    """The SFT / S-DPO rows (gen, rank HR@1) and the paired lines (delta, low, high)."""
    rows = {name: (float(g), float(r)) for name, g, r in _ROW.findall(block)}
    paired = {name: (float(d), float(lo), float(hi)) for name, d, lo, hi in _PAIRED.findall(block)}
    return {**rows, **paired}


def table(results: dict[tuple[str, int], dict]) -> str:
    """Markdown table, one row per (setting, seed), then the count of robust rows."""
    lines = ["| kernels | seed | SFT gen / rank HR@1 | S-DPO gen / rank HR@1 | Δ gen HR@1 [95% CI] "
             "| Δ rank HR@1 [95% CI] | both > 0 |", "|:--|--:|--:|--:|--:|--:|:--:|"]
    ok = 0
    for (setting, seed), r in results.items():
        g, k = r["generation"], r["ranking"]
        both = g[1] > 0 and k[1] > 0
        ok += both
        lines.append(f"| {setting} | {seed} | {r['SFT'][0]:.4f} / {r['SFT'][1]:.4f} "
                     f"| {r['S-DPO'][0]:.4f} / {r['S-DPO'][1]:.4f} "
                     f"| {g[0]:+.4f} [{g[1]:+.4f}, {g[2]:+.4f}] | {k[0]:+.4f} [{k[1]:+.4f}, {k[2]:+.4f}] "
                     f"| {'yes' if both else 'no'} |")
    lines.append(f"\n{ok} of {len(results)} runs have both paired intervals above 0.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("runs/demo_robustness"))
    parser.add_argument("--jobs", type=int, default=2, help="demos run at a time (one thread each)")
    parser.add_argument("--configs", type=Path, default=REPO / "configs",
                        help="directory of the quickstart YAML files (a variant of the demo's design)")
    args, extra = parser.parse_known_args(argv)
    todo = [(s, seed) for s in args.settings if cpu_has(s) for seed in args.seeds]
    skipped = [s for s in args.settings if not cpu_has(s)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        files = dict(zip(todo, pool.map(lambda t: run_one(args.out, *t, extra, args.configs), todo)))
    results = {key: parse(path.read_text()) for key, path in files.items()}
    print(table(results))
    if skipped:
        print(f"Skipped (this CPU lacks them): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
