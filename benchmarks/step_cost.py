"""Per-example cost of one training step: naive + live reference vs shared prefix + cached reference.

What is timed: one training step on a fixed batch of real LastFM rows — the policy's forward
and backward, plus for ``naive + live`` the reference's forward (LoRA adapter disabled, no
grad) — for SFT and for S-DPO at K = 1 (= DPO), 3, 8 and 19:

* ``naive + live``: the official code's way: B*(K+1) full ``prompt+completion`` rows through
  the policy (full logits), then the same rows again through the reference.
* ``shared prefix + cached``: one packed row per example (prompt once, the K+1 completions
  branch off it; logits only at completion positions); the reference log-probs come from the
  ``ReferenceCache`` table, built once before training. The build (every candidate of every
  example, one no-grad shared-prefix pass) is reported separately as a one-off cost per
  example; it serves every epoch, every K and every negative-sampling strategy.

The optimizer step (AdamW on the LoRA weights, negligible) is not included. Both paths run the
project's own code (``SDPOModule.score`` / ``reference_logps``, ``ReferenceCache.build``,
``RecDataModule`` prompts and negatives) on the same rows, negatives and LoRA weights, and must
give the same loss (|Δ| ≤ 1e-4). The LoRA B matrices get small seeded random values (instead of
peft's zeros), so the policy differs from the reference and the loss is not the trivial log(1+K).

Method: every configuration runs in a fresh subprocess: load the model (SmolLM2-135M, GGUF
dequantized to fp32 once into ``--work-dir``), build the batch, one warm-up SFT step, then
``--repeats`` timed steps (fewer when they exceed ``--time-budget`` seconds; at least one); the
table shows the median wall time divided by the batch size, and the process's CPU time.
Workers run with one torch thread (``--threads``) and ``OMP_WAIT_POLICY=PASSIVE``: on a machine
whose cores are shared with other processes, two spinning OpenMP threads made single steps
5-20x slower at random; one thread gives wall ≈ CPU time and stable ratios. Peak memory is the process's peak
resident set size (``VmHWM``) during the timed steps: before them the kernel's high-water mark
is reset (``/proc/self/clear_refs``) after ``gc`` and ``malloc_trim``. "Δ step" is that peak
minus the resident size just before the step (the model, LoRA and optimizer-free state), i.e.
the step's own activations, logits and gradients.

A second table compares DPO (K=1) against TRL's ``DPOTrainer`` (optional dependency: ``pip
install -e .[benchmark]``) on the same model, rows, pairs and LoRA settings: TRL's
``training_step`` (forward + backward, reference forward unless ``precompute_ref_log_probs``).

Usage (from the repository root)::

    python benchmarks/step_cost.py                 # the full run (~9 min on 2 cores, 1 thread)
    python benchmarks/step_cost.py --quick         # K=1,3, batch 1, one repeat (~2-3 min)
    python benchmarks/step_cost.py --threads 0     # torch's default thread count (idle machines)
    python benchmarks/step_cost.py --ks 3,8 --repeats 5 --batch-size 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# shared with trl_dpo.py and the other benchmarks
from _common import DEFAULT_DATA, DEFAULT_GGUF, LORA, REPO, build, prepare_model
from timing import load_average, timed

sys.path.insert(0, str(REPO))
AGREE = 1e-4


# ---------------------------------------------------------------------------- preparation
def prepare_rows(data: Path, batch_size: int, seed: int, work_dir: Path) -> Path:
    """The benchmark's rows: ``batch_size`` rows of the data file drawn with ``seed``."""
    import random

    rows = json.loads(data.read_text())
    pick = sorted(random.Random(seed).sample(range(len(rows)), batch_size))
    out = work_dir / f"rows-{data.stem}-b{batch_size}-s{seed}.json"
    out.write_text(json.dumps([rows[i] for i in pick]))
    return out


# ---------------------------------------------------------------------------- worker side
def our_step(module: Any, batch: dict[str, Any], kind: str, cached: bool) -> float:
    """One training step as ``SDPOModule._step`` does it (without logging); returns the loss."""
    from sdpo_lightning.scoring.reference_cache import eval_mode
    from sdpo_lightning.training.objectives import preference_loss, sft_loss

    ids, mask = batch["completion_input_ids"], batch["completion_attention_mask"]  # (B, N, C)
    if kind == "sft":
        out = module.score(batch, ids[:, :1], mask[:, :1])
        loss = sft_loss(out.logps[:, 0], out.n_tokens[:, 0]).mean()
    else:
        pol = module.score(batch, ids, mask).logps  # (B, 1 + K)
        if cached:
            ref = module.ref_cache.lookup("fit", batch["index"]).gather(
                1, batch["completion_index"]
            )  # (B, 1 + K)
        else:
            with eval_mode(module.policy):
                ref = module.reference_logps(batch, ids, mask)  # (B, 1 + K), adapter off, no grad
        loss = preference_loss(
            "sdpo", pol[:, 0], pol[:, 1:], ref[:, 0], ref[:, 1:], 1.0
        ).losses.mean()
    loss.backward()
    return float(loss.detach())


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    if cfg["kind"] == "trl":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from trl_dpo import trl_worker

        return trl_worker(cfg)
    from sdpo_lightning.scoring.reference_cache import ReferenceCache

    module, dm, batch = build(cfg)
    cached = cfg["path"] == "shared" and cfg["kind"] != "sft"
    result: dict[str, Any] = {}
    zero_grad = lambda: module.policy.zero_grad(set_to_none=True)  # noqa: E731
    our_step(
        module, batch, "sft", False
    )  # warm-up: threads, allocator, kernels, first touch of the weights
    if cached:
        with tempfile.TemporaryDirectory() as root:
            t0 = time.perf_counter()
            module.ref_cache = ReferenceCache.build(
                module.reference_source(), dm, root, batch_size=cfg["batch_size"], splits=("fit",)
            )
            result["cache_build_s"] = time.perf_counter() - t0
            assert module.ref_cache.stats["fit"]["hit"] is False
    result.update(
        timed(
            lambda: our_step(module, batch, cfg["kind"], cached),
            zero_grad,
            cfg["repeats"],
            cfg["budget"],
        )
    )
    cmask = batch["completion_attention_mask"]  # (B, N, C)
    result["tokens"] = {
        "prompt": int(batch["prompt_attention_mask"].sum(-1).max()),
        "completion_cols": int(cmask.shape[-1]),
        "completion_real": int(cmask.sum()),
        "completion_slots": int(cmask.numel()),
    }
    return result


# ---------------------------------------------------------------------------- parent side
def run_worker(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning. With other processes
    # on the cores, spinning threads made single steps 5-20x slower here, at random.
    env = {
        "OMP_WAIT_POLICY": "PASSIVE",
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    load0, t0 = load_average(), time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(cfg)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}", "stderr": proc.stderr[-4000:]}
    out = json.loads(lines[-1][len("RESULT ") :])
    out.update(load_before=load0, load_after=load_average(), wall_s=time.perf_counter() - t0)
    return out


def _per_ex(r: dict[str, Any], b: int, key: str = "seconds") -> float | None:
    return statistics.median(r[key]) / b if r and key in r else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _mem(r: dict[str, Any]) -> str:
    if not r or r.get("peak_rss_mb") is None:
        return "n/a"
    return f"{r['peak_rss_mb']:.0f} ({r['step_mb']:.0f})"


def step_table(results: dict[tuple, dict], ks: list[int], b: int) -> tuple[str, dict[str, Any]]:
    lines = [
        "| step | naive + live: s/example (CPU s) | shared prefix + cached: s/example (CPU s) | speed-up | speed-up in CPU time | "
        "peak RSS MB (Δ step), naive + live | peak RSS MB (Δ step), shared + cached | "
        "loss, naive + live | loss, shared + cached | loss agree (≤1e-4) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    summary: dict[str, Any] = {}
    for kind, k in [("sft", 0)] + [("sdpo", k) for k in ks]:
        n, s = results.get((kind, k, "naive"), {}), results.get((kind, k, "shared"), {})
        tn, ts = _per_ex(n, b), _per_ex(s, b)
        ratio = tn / ts if tn and ts else None
        cn, cs = _per_ex(n, b, "cpu_seconds"), _per_ex(s, b, "cpu_seconds")
        cpu_ratio = cn / cs if cn and cs else None
        ln, ls = n.get("loss"), s.get("loss")
        agree = None if ln is None or ls is None else abs(ln - ls) <= AGREE
        label = "SFT" if kind == "sft" else (f"S-DPO K={k}" + (" (= DPO)" if k == 1 else ""))
        errors = "; ".join(
            f"{p}: {r['error']}" for p, r in (("naive", n), ("shared", s)) if r.get("error")
        )
        lines.append(
            f"| {label} | {_fmt(tn)} ({_fmt(cn)}) | {_fmt(ts)} ({_fmt(cs)}) | {_fmt(ratio, '.1f')}× | {_fmt(cpu_ratio, '.1f')}× | "
            f"{_mem(n)} | {_mem(s)} | "
            f"{_fmt(ln, '.6f')} | {_fmt(ls, '.6f')} | {'—' if agree is None else ('yes' if agree else 'NO')}"
            f"{' (' + abs(ln - ls).__format__('.1e') + ')' if agree is not None else ''} |"
            + (f" error: {errors}" if errors else "")
        )
        summary[f"{kind}{k}"] = {
            "naive_s": tn,
            "shared_s": ts,
            "ratio": ratio,
            "agree": agree,
            "naive_cpu": cn,
            "shared_cpu": cs,
            "cpu_ratio": cpu_ratio,
            "naive_peak": n.get("peak_rss_mb"),
            "shared_peak": s.get("peak_rss_mb"),
            "naive_step_mb": n.get("step_mb"),
            "shared_step_mb": s.get("step_mb"),
        }
    return "\n".join(lines), summary


def trl_table(results: dict[tuple, dict], b: int) -> tuple[str, dict[str, Any]]:
    ours_n, ours_s = results.get(("sdpo", 1, "naive"), {}), results.get(("sdpo", 1, "shared"), {})
    trl, trl_pre = results.get(("trl", 1, "live"), {}), results.get(("trl", 1, "precompute"), {})
    base = _per_ex(trl, b)
    rows = [
        ("TRL DPOTrainer", "live (adapter off, every step)", trl),
        ("TRL DPOTrainer, precompute_ref_log_probs", "precomputed once", trl_pre),
        ("sdpo_lightning, naive + live", "live (adapter off, every step)", ours_n),
        ("sdpo_lightning, shared prefix + cached", "cached once", ours_s),
    ]
    base_cpu = _per_ex(trl, b, "cpu_seconds")
    lines = [
        "| implementation (DPO, K=1) | reference | s/example (CPU s) | speed vs TRL DPOTrainer | same in CPU time | "
        "one-off reference pass s/example | peak RSS MB (Δ step) | loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ref, r in rows:
        if r.get("error") or r.get("unavailable"):
            lines.append(
                f"| {name} | {ref} | not run: {r.get('unavailable') or r.get('error')} | n/a | n/a | n/a | n/a | n/a |"
            )
            continue
        t, c = _per_ex(r, b), _per_ex(r, b, "cpu_seconds")
        one_off = r.get("cache_build_s", r.get("precompute_s"))
        lines.append(
            f"| {name} | {ref} | {_fmt(t)} ({_fmt(c)}) | {_fmt(base / t if base and t else None, '.2f')}× | "
            f"{_fmt(base_cpu / c if base_cpu and c else None, '.2f')}× | "
            f"{_fmt(one_off / b if one_off is not None else None)} | {_mem(r)} | {_fmt(r.get('loss'), '.6f')} |"
        )
    return "\n".join(lines), {
        "trl_s": base,
        "trl_pre_s": _per_ex(trl_pre, b),
        "ours_shared_s": _per_ex(ours_s, b),
        "ours_naive_s": _per_ex(ours_n, b),
        "trl_error": trl.get("error") or trl.get("unavailable"),
        "trl_cpu": base_cpu,
        "ours_shared_cpu": _per_ex(ours_s, b, "cpu_seconds"),
    }


def targets(s: dict[str, Any], t: dict[str, Any], ks: list[int]) -> list[str]:
    out = []

    def check(name: str, value: float | None, ok: bool | None, detail: str) -> None:
        status = "not measured" if ok is None else ("MET" if ok else "MISSED")
        out.append(f"- {name}: {detail} → **{status}**")

    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = s.get(a, {}).get(key), s.get(b, {}).get(key)
        return x / y if x and y else None

    for k, need in ((3, 4.0), (8, 8.0)):
        r = s.get(f"sdpo{k}", {}).get("ratio") if k in ks else None
        c = s.get(f"sdpo{k}", {}).get("cpu_ratio") if k in ks else None
        check(
            f"shared + cached ≥ {need:.0f}× faster than naive + live at K={k}",
            r,
            None if r is None else r >= need,
            f"{_fmt(r, '.1f')}× wall time ({_fmt(c, '.1f')}× CPU time)",
        )
    for other, name in (
        ("sdpo3", "S-DPO K=3 step (shared + cached)"),
        ("sft0", "SFT step (both shared prefix)"),
    ):
        r, c = ratio("sdpo19", other, "shared_s"), ratio("sdpo19", other, "shared_cpu")
        check(
            f"S-DPO K=19 step ≤ 2× {name}",
            r,
            None if r is None else r <= 2,
            f"{_fmt(r)}× wall time ({_fmt(c)}× CPU time)",
        )
    ours, trl, pre = t.get("ours_shared_s"), t.get("trl_s"), t.get("trl_pre_s")
    r = trl / ours if ours and trl else None
    detail = f"{_fmt(r)}× faster than DPOTrainer" + (
        f", {_fmt(pre / ours)}× faster than DPOTrainer with precompute_ref_log_probs"
        if ours and pre
        else ""
    )
    c = (
        t["trl_cpu"] / t["ours_shared_cpu"]
        if t.get("trl_cpu") and t.get("ours_shared_cpu")
        else None
    )
    check(
        "faster than TRL's DPOTrainer at K=1",
        r,
        None if r is None else r > 1,
        detail
        + f" (CPU time: {_fmt(c)}×)"
        + (f" — TRL: {t['trl_error']}" if t.get("trl_error") else ""),
    )
    p19, psft = (s.get(x, {}).get("shared_peak") for x in ("sdpo19", "sft0"))
    d19, dsft = (s.get(x, {}).get("shared_step_mb") for x in ("sdpo19", "sft0"))
    r = p19 / psft if p19 and psft else None
    extra = (
        f" (the step's own memory, Δ: {d19:.0f} vs {dsft:.0f} MB = {d19 / dsft:.2f}×)"
        if d19 and dsft
        else ""
    )
    check(
        "peak memory of the K=19 step ≤ 2× the SFT step (process peak RSS)",
        r,
        None if r is None else r <= 2,
        f"{_fmt(r)}×{extra}",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_GGUF,
        help="GGUF file (default: ../shared SmolLM2-135M)",
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="candidate-list JSON (default: LastFM train)",
    )
    ap.add_argument("--ks", default="1,3,8,19", help="numbers of negatives K (default 1,3,8,19)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed steps per configuration (median reported)"
    )
    ap.add_argument(
        "--time-budget",
        type=float,
        default=120.0,
        help="stop repeating a configuration once its timed steps took this many seconds",
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="seeds the rows, negatives and LoRA weights"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per configuration (default 1; 0: torch's choice, all cores)",
    )
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL DPOTrainer table")
    ap.add_argument("--quick", action="store_true", help="K=1,3, batch 1, one repeat: a smoke run")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "sdpo_step_cost")
    ap.add_argument(
        "--timeout", type=float, default=1500.0, help="seconds per configuration subprocess"
    )
    ap.add_argument("--json", type=Path, help="also write all measurements here")
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.quick:
        args.ks, args.batch_size, args.repeats = "1,3", 1, 1
    ks = sorted({int(k) for k in args.ks.split(",")})
    for path in (args.model, args.data):
        if not path.exists():
            print(
                f"missing {path} (the benchmark reads ../shared next to the repository)",
                file=sys.stderr,
            )
            return 2
    import torch

    args.work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.model, args.work_dir)
    rows_file = prepare_rows(args.data, args.batch_size, args.seed, args.work_dir)
    base = {
        "model_dir": str(model_dir),
        "rows_file": str(rows_file),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seed": args.seed,
        "repeats": args.repeats,
        "budget": args.time_budget,
        "threads": args.threads,
    }
    plan = [("sft", 0, p) for p in ("naive", "shared")] + [
        ("sdpo", k, p) for k in ks for p in ("naive", "shared")
    ]
    if not args.no_trl:
        if 1 not in ks:
            plan += [("sdpo", 1, p) for p in ("naive", "shared")]
        plan += [("trl", 1, "live"), ("trl", 1, "precompute")]
    results: dict[tuple, dict] = {}
    started = time.perf_counter()
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    for kind, k, path in plan:
        cfg = {**base, "kind": kind, "k": k, "path": path}
        print(
            f"[{time.perf_counter() - started:6.0f}s] {kind} K={k} {path} (load {load_average():.2f}) ...",
            file=sys.stderr,
            flush=True,
        )
        results[(kind, k, path)] = r = run_worker(cfg, args.timeout)
        if r.get("error"):
            print(
                f"    error: {r['error']}\n{r.get('stderr', '')[-1500:]}",
                file=sys.stderr,
                flush=True,
            )
        elif r.get("unavailable"):
            print(f"    unavailable: {r['unavailable']}", file=sys.stderr, flush=True)
        else:
            print(
                f"    median {statistics.median(r['seconds']):.2f} s/step over {len(r['seconds'])}, "
                f"loss {r['loss']:.6f}, peak {r.get('peak_rss_mb')} MB",
                file=sys.stderr,
                flush=True,
            )
    load_end = Path("/proc/loadavg").read_text().split()[:3]
    b = args.batch_size
    table1, s = step_table(results, ks, b)
    table2, t = trl_table(results, b) if not args.no_trl else ("(TRL table skipped: --no-trl)", {})
    builds = [r["cache_build_s"] / b for r in results.values() if "cache_build_s" in r]
    tok = next((r["tokens"] for r in results.values() if "tokens" in r), {})
    print(
        f"# Step cost: {args.model.name}, fp32, LoRA r={LORA['r']} on {'/'.join(LORA['target_modules'])}, "
        f"batch {b} of {args.data.parent.name}/{args.data.name} (seed {args.seed}), max_length {args.max_length}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {args.threads or torch.get_num_threads()} "
        f"thread(s) per configuration, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}; load average (1/5/15 min) {' '.join(load_start)} at start, {' '.join(load_end)} at the end; "
        f"longest prompt {tok.get('prompt')} tokens; {len(plan)} configurations in "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(
        f"command: python {' '.join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:]))}"
    )
    print("\n## Training step (policy forward + backward + reference), median per example\n")
    print(table1)
    if builds:
        print(
            f"\nOne-off cache build (reference scores of all 20 candidates, shared prefix, no grad): "
            f"{statistics.median(builds):.2f} s/example (median of {len(builds)} builds), paid once for all "
            f"epochs, K and negative samplers."
        )
    layouts = {
        k: r["tokens"]
        for (kind, k, path), r in results.items()
        if kind == "sdpo" and path == "shared" and "tokens" in r
    }
    if layouts:
        print(
            "Completion tokens in the batch, real / padded (B, N, C) input slots (the shared-prefix row "
            "packs only the real ones): "
            + ", ".join(
                f"K={k}: {t['completion_real']}/{t['completion_slots']}"
                for k, t in sorted(layouts.items())
            )
        )
    print("\n## DPO (K=1) against TRL's DPOTrainer, same model, rows, pairs and LoRA\n")
    print(table2)
    print("\n## Targets\n")
    print("\n".join(targets(s, t, ks)))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "load_start": load_start,
                    "load_end": load_end,
                    "results": {"/".join(map(str, key)): r for key, r in results.items()},
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
