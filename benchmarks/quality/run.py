"""Reproduce the paper's comparison end to end on real data, on CPU.

SmolLM2-135M-Instruct (GGUF, ../shared/models) with LoRA on LastFM (../shared/data/lastfm):

    zero-shot ("Vanilla") → SFT → {DPO, DPO-K (K=3), S-DPO K=3, S-DPO K=8}

Every alignment run starts from the same SFT adapter (which is also its reference), with
the same seed, rows and budget; the reference log-probs are cached once and shared by all
four. Every model is tested with both protocols on the same test rows, then the
Table-1-shaped comparison (sdpo-report), a ranking table and the reward-curve figures
(sdpo-plots) are written.

Data: ``train.json`` is split by user (seeded) into a fit part and a selection part
(validation loss / reward curves); the test rows are a seeded sample of ``valid.json``.
The budget (steps, rows, LoRA rank, max_length) is chosen to fit about 2 hours on 2 CPU
cores; see ``--help`` and the README. Each stage writes a marker when it completes, so a
re-run resumes where an interrupted one stopped. Artefacts live in ``--out`` (outside the
repository by default).

    python benchmarks/quality/run.py --out ../sdpo_quality
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LASTFM = SHARED / "data" / "lastfm"

# OpenMP threads spinning at barriers made steps 5-20x slower at random on shared cores
ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}

ALIGN = [  # (run name, method label, objective, K)
    ("dpo", "DPO", "dpo", 1),
    ("dpo_k3", "DPO-K (K=3)", "dpo_k", 3),
    ("sdpo_k3", "S-DPO (K=3)", "sdpo", 3),
    ("sdpo_k8", "S-DPO (K=8)", "sdpo", 8),
]


def lastfm_users(rows: list[dict]) -> list[int]:
    """A user label per LastFM row: consecutive rows are one user's sliding windows when a
    row's history is the previous history plus its target (the files carry no user id)."""

    def hist(r: dict) -> list[str]:
        h = r["historyList"]
        return h.split("::") if isinstance(h, str) else list(h)

    users: list[int] = []
    for i, r in enumerate(rows):
        if i:
            prev = rows[i - 1]
            h = hist(r)
            if len(h) >= len(hist(prev)) and h == (hist(prev) + [prev["trueSelection"]])[-len(h) :]:
                users.append(users[-1])
                continue
        users.append(users[-1] + 1 if users else 0)
    return users


def split_data(
    out: Path, seed: int, select_frac: float, align_rows: int, test_rows: int
) -> dict[str, Path]:
    """Write the fit / selection / alignment / test files (seeded, by user for train)."""
    data = out / "lastfm"  # the directory name is the dataset column of the report
    data.mkdir(parents=True, exist_ok=True)
    train = json.loads((LASTFM / "train.json").read_text())
    rng = random.Random(seed)

    users = lastfm_users(train)  # the rows carry no user id
    groups: list[list[dict]] = [[] for _ in range(users[-1] + 1 if users else 0)]
    for r, u in zip(train, users, strict=True):
        groups[u].append(r)
    order = list(range(len(groups)))
    rng.shuffle(order)
    n_select = max(1, round(select_frac * len(groups)))
    select = [r for g in order[:n_select] for r in groups[g]]
    fit = [r for g in order[n_select:] for r in groups[g]]
    align = list(fit)
    rng.shuffle(align)
    test = json.loads((LASTFM / "valid.json").read_text())
    test = [test[i] for i in sorted(rng.sample(range(len(test)), min(test_rows, len(test))))]
    files = {"fit": fit, "select": select, "align": align[:align_rows], "test": test}
    (out / "split.json").write_text(
        json.dumps({k: len(v) for k, v in files.items()} | {"user_groups": len(groups)})
    )
    return write_rows(data, files)


def write_rows(data: Path, files: dict[str, list[dict]]) -> dict[str, Path]:
    """Write each list of rows to ``data/<name>.json`` and return the paths; a file already
    holding the same rows is left alone (runners may share ``out``), others are replaced
    atomically."""
    data.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in files.items():
        paths[name] = data / f"{name}.json"
        text = json.dumps(rows, ensure_ascii=False)
        if not paths[name].is_file() or paths[name].read_text() != text:
            tmp = paths[name].with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, paths[name])
    return paths


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class Runner:
    """Runs `sdpo` stages as subprocesses, with markers for resuming and a timing log (a stage
    stopped part-way and run again, e.g. one that resumes from its checkpoint, counts the wall
    time of every start, a failed one included)."""

    def __init__(self, out: Path, dry_run: bool = False, tick: float = 60.0) -> None:
        self.out, self.dry_run, self.tick = out, dry_run, tick
        self.timings_path = out / "timings.json"
        self.timings = (
            json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        )
        self.ran: dict[str, float] = {}  # the stages this runner ran, and their times

    def _lock(self, name: str) -> bool:
        """Claim a stage so that several runners (e.g. one with --reverse) can share the work;
        a lock whose process is gone is stale and taken over."""
        lock = self.out / "running" / name
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and _alive(owner):
                return False
            lock.write_text(str(os.getpid()))
            return True
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True

    def stage(self, name: str, args: list[str], module: str = "sdpo_lightning") -> None:
        marker = self.out / "done" / name
        if marker.exists():
            print(f"[skip] {name} (done)")
            return
        if not self.dry_run and not self._lock(name):
            print(f"[busy] {name} (another runner has it)")
            return
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", module, *args]
        print(f"[run ] {name}: {' '.join(cmd[2:])}", flush=True)
        if self.dry_run:
            return
        # a stage stopped part-way (the process ended) and resumed later counts every start's
        # wall time: the time so far is on disk (started/<name>), updated once a minute
        spent = self.out / "started" / name
        spent.parent.mkdir(parents=True, exist_ok=True)
        before = float(spent.read_text() or 0) if spent.is_file() else 0.0
        start = time.perf_counter()
        with log.open("a" if before else "w") as f:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=ENV)
            while True:
                try:
                    proc.wait(timeout=self.tick)
                    break
                except subprocess.TimeoutExpired:
                    spent.write_text(f"{before + time.perf_counter() - start:.3f}")
        elapsed = before + time.perf_counter() - start
        spent.write_text(f"{elapsed:.3f}")
        if proc.returncode != 0:
            raise SystemExit(f"stage {name} failed (exit {proc.returncode}); see {log}")
        # merge with what other runners wrote meanwhile: theirs win, except the stages run here
        self.ran[name] = round(elapsed, 1)
        on_disk = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.timings = {**on_disk, **self.ran}
        self.timings_path.write_text(json.dumps(self.timings, indent=1))
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        (self.out / "running" / name).unlink(missing_ok=True)
        print(f"       {name}: {self.timings[name]:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, default=REPO.parent / "sdpo_quality", help="artefact directory"
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sft-steps", type=int, default=100)
    p.add_argument("--align-steps", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--align-rows", type=int, default=512, help="training rows for the alignment runs"
    )
    p.add_argument("--test-rows", type=int, default=160, help="seeded sample of valid.json")
    p.add_argument("--select-frac", type=float, default=0.1, help="share of train users held out")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--sft-lr", type=float, default=3e-4)
    p.add_argument("--align-lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--dry-run", action="store_true", help="print the stages only")
    p.add_argument(
        "--reverse",
        action="store_true",
        help="run the alignment methods in reverse order (a second runner shares the work)",
    )
    a = p.parse_args(argv)
    if not GGUF.is_file() or not (LASTFM / "train.json").is_file():
        print(f"quality benchmark needs {GGUF} and {LASTFM}/train.json", file=sys.stderr)
        return 2
    out = a.out.resolve()
    files = split_data(out, a.seed, a.select_frac, a.align_rows, a.test_rows)
    run = Runner(out, a.dry_run)
    lora = f"{{r: {a.lora_r}, alpha: {2 * a.lora_r}, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj]}}"
    common = [
        "--seed_everything",
        str(a.seed),
        "--model.source.model_name_or_path",
        str(GGUF),
        "--model.source.dtype",
        "float32",
        "--model.source.gradient_checkpointing",
        "false",
        "--model.eval.max_new_tokens",
        str(a.max_new_tokens),
        "--model.eval.eval_protocols",
        "[generation, ranking]",
        "--trainer.precision",
        "32",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accumulate_grad_batches",
        "1",
        "--data.val_file",
        str(files["select"]),
        "--data.test_file",
        str(files["test"]),
        "--data.batch_size",
        str(a.batch_size),
        "--data.eval_batch_size",
        "8",
        "--data.max_length",
        str(a.max_length),
        "--data.limit_val_examples",
        "64",
        "--trainer.log_every_n_steps",
        "4",
    ]
    sft_cfg, sdpo_cfg = "configs/lastfm/sft.yaml", "configs/lastfm/sdpo.yaml"
    runs = out / "runs"

    def test(name: str, cfg: str, method: str, extra: list[str]) -> None:
        if name != "vanilla" and not a.dry_run and not (out / "done" / f"fit_{name}").exists():
            print(f"[wait] test_{name} (its fit runs in another runner)")
            return
        run.stage(
            f"test_{name}",
            [
                "test",
                "-c",
                cfg,
                *common,
                "--trainer.default_root_dir",
                str(runs / name),
                "--model.output.method",
                method,
                "--model.output.run_name",
                name,
                *extra,
            ],
        )

    test("vanilla", sft_cfg, "Vanilla", ["--model.lora", "null"])
    run.stage(
        "fit_sft",
        [
            "fit",
            "-c",
            sft_cfg,
            *common,
            "--trainer.default_root_dir",
            str(runs / "sft"),
            "--data.train_file",
            str(files["fit"]),
            "--model.lora",
            lora,
            "--model.optim.learning_rate",
            str(a.sft_lr),
            "--model.optim.warmup_steps",
            "10",
            "--trainer.max_steps",
            str(a.sft_steps),
            "--trainer.val_check_interval",
            str(a.sft_steps // 2),
            "--trainer.max_epochs",
            "-1",
        ],
    )
    sft_adapter = runs / "sft" / "export"
    test("sft", sft_cfg, "SFT", ["--model.source.init_adapter", str(sft_adapter)])
    for name, method, objective, k in ALIGN[::-1] if a.reverse else ALIGN:
        run.stage(
            f"fit_{name}",
            [
                "fit",
                "-c",
                sdpo_cfg,
                *common,
                "--trainer.default_root_dir",
                str(runs / name),
                "--data.train_file",
                str(files["align"]),
                "--model.source.init_adapter",
                str(sft_adapter),
                "--model.objective.name",
                objective,
                "--model.objective.num_negatives",
                str(k),
                "--model.objective.beta",
                str(a.beta),
                "--model.scoring.reference",
                "cached",
                "--model.scoring.reference_cache_dir",
                str(out / "reference_cache"),
                "--model.optim.learning_rate",
                str(a.align_lr),
                "--model.optim.warmup_steps",
                "8",
                "--trainer.max_steps",
                str(a.align_steps),
                "--trainer.val_check_interval",
                str(a.align_steps // 2),
                "--trainer.max_epochs",
                "-1",
            ],
        )
        test(name, sdpo_cfg, method, ["--model.source.init_adapter", str(runs / name / "export")])
    if a.dry_run:
        return 0
    if not all(
        (out / "done" / f"test_{n}").exists() for n in ["vanilla", "sft"] + [n for n, *_ in ALIGN]
    ):
        print("other stages are still running in another runner; it renders the tables")
        return 0
    order = ["vanilla", "sft"] + [n for n, *_ in ALIGN]
    summaries = [str(runs / n / "summary.json") for n in order]
    from sdpo_lightning.analysis.cli import main as plots
    from sdpo_lightning.evaluation.report import comparison_table

    table = comparison_table(summaries, baseline_last=True)
    ranking = ranking_table(summaries)
    (out / "table.md").write_text(table + "\n" + ranking)
    plots([str(runs / n) for n in order[1:]] + ["--out", str(out / "figures")])
    timings = json.loads(run.timings_path.read_text()) if run.timings_path.exists() else run.timings
    total = sum(timings.values())
    print(table)
    print(ranking)
    print(f"stage wall times (s): {json.dumps(timings)}; total {total / 60:.1f} min")
    return 0


def ranking_table(summaries: list[str]) -> str:
    """Markdown: method × (generation HR@1, ValidRatio, ranking HR@1/3/5, NDCG@5/10, MRR) with CIs."""
    cols = [
        ("generation", "hr@1"),
        ("generation", "valid_ratio"),
        ("ranking", "hr@1"),
        ("ranking", "hr@3"),
        ("ranking", "ndcg@5"),
        ("ranking", "ndcg@10"),
        ("ranking", "mrr"),
    ]
    head = (
        "| method | "
        + " | ".join(f"{dict(generation='gen', ranking='rank')[p]} {m}" for p, m in cols)
        + " |"
    )
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for path in summaries:
        s = json.loads(Path(path).read_text())
        cells = []
        for proto, metric in cols:
            m = s["protocols"].get(proto, {}).get(metric)
            cells.append(
                "–"
                if not m or m["value"] is None
                else f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
            )
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
