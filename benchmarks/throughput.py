"""Training examples/s and evaluation rows/s, baseline setting and options, in one process.

Setup: SmolLM2-135M-Instruct (GGUF dequantized to fp32 once, as ``step_cost.py`` does), LoRA
r=8 on q/k/v/o with seeded non-zero B (so the policy differs from the base), LastFM rows drawn
with ``--seed``: ``--train-rows`` of ``train.json`` in batches of 4, ``--eval-rows`` of
``valid.json`` in batches of ``--eval-batch``.

Training (forward + backward of one step, no optimizer step so every pass sees the same weights;
S-DPO K=3 with random negatives and the reference log-probs precomputed, as the reference cache
gives them): today's path (fp32, adapters on all layers) against the options — bf16 autocast
(``trainer.precision: bf16-mixed``) and adapters on the top layers only (``lora.layers_to_transform``).
"max |Δ loss|" compares per-step losses with today's on the same weights (the top-layer options
are a different model: no loss comparison, their quality needs a training run).

Evaluation: the reference path (``Evaluator(one_pass=False)``: ``model.generate``, then a
separate ranking pass) against the one-pass path (``Evaluator()``), per protocol, in fp32; the
one-pass path in bf16 autocast as an option, compared with fp32 on the same rows. Agreement:
parsed answers / target ranks equal, the largest ranking-score difference.

Usage::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/throughput.py
    python benchmarks/throughput.py --train-rows 4 --eval-rows 8 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from _common import DEFAULT_GGUF, SHARED, prepare_model  # noqa: E402

LORA = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
K = 3


def rows_file(src: Path, n: int, seed: int, work: Path) -> Path:
    rows = json.loads(src.read_text())
    pick = sorted(random.Random(seed).sample(range(len(rows)), n))
    out = work / f"rows-{src.stem}-{n}-s{seed}.json"
    out.write_text(json.dumps([rows[i] for i in pick]))
    return out


def build_module(
    model_dir: Path, objective: str, layers: list[int] | None, seed: int, trunk: bool = False
) -> Any:
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import EvalArgs, ModelArgs, ObjectiveArgs, ScoringArgs

    torch.manual_seed(seed)
    module = SDPOModule(
        source=ModelArgs(model_name_or_path=str(model_dir)),
        lora={**LORA, "layers_to_transform": layers},
        objective=ObjectiveArgs(name=objective, num_negatives=K),
        scoring=ScoringArgs(reference="cached", trunk_cache=trunk),
        eval=EvalArgs(max_new_tokens=32),
    )
    module.configure_model()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(module.policy.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return module


def batches(module: Any, data: Path, split: str, size: int, seed: int) -> list[dict[str, Any]]:
    from sdpo_lightning.data.collate import make_collate, negative_indices, select_completions
    from sdpo_lightning.data.datamodule import RecDataModule

    key = "train_file" if split == "fit" else "test_file"
    dm = RecDataModule(
        **{key: str(data)},
        prompt_templates="music",
        num_negatives=K,
        batch_size=size,
        eval_batch_size=size,
        max_length=512,
        seed=seed,
    )
    dm.tokenizer = module.tokenizer
    dm.setup(split)
    ds = dm.datasets[split]
    collate = make_collate(module.tokenizer.pad_token_id)
    out = [
        collate([ds[i] for i in range(s, min(s + size, len(ds)))]) for s in range(0, len(ds), size)
    ]
    if split == "fit":
        out = [select_completions(b, negative_indices(b, K, "random", seed, epoch=0)) for b in out]
    return out


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_pass(module: Any, bs: list[dict[str, Any]], kind: str, bf16: bool) -> list[float]:
    """One forward + backward per batch, as ``SDPOModule._step`` computes the loss."""
    from sdpo_lightning.training.objectives import preference_loss, sft_loss

    losses = []
    for b in bs:
        module.policy.zero_grad(set_to_none=True)
        ids, mask = b["completion_input_ids"], b["completion_attention_mask"]
        with autocast(bf16):
            if kind == "sft":
                out = module.score(b, ids[:, :1], mask[:, :1])
                loss = sft_loss(out.logps[:, 0], out.n_tokens[:, 0]).mean()
            else:
                pol, ref = module.score(b, ids, mask).logps, b["ref_logps"]  # (B, 1 + K)
                loss = preference_loss(
                    "sdpo", pol[:, 0], pol[:, 1:], ref[:, 0], ref[:, 1:], 1.0
                ).losses.mean()
        loss.backward()
        losses.append(float(loss.detach()))
    return losses


def timed(fn, repeats: int, before=None) -> tuple[float, float, Any]:
    """Median wall and CPU seconds of ``repeats`` calls (after one warm-up), last result;
    ``before()`` runs untimed before each call (e.g. to empty a cache)."""
    if before is not None:
        before()
    result = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if before is not None:
            before()
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), result


def train_table(args: argparse.Namespace, model_dir: Path, data: Path, n_layers: int) -> list[str]:
    top = list(range(n_layers - args.top_layers, n_layers))
    n = args.top_layers
    # (label, adapter layers, bf16, trunk cache: None | "first" (filled in the step) | "later")
    variants = [
        ("today: fp32, adapters on all layers (exact path)", None, False, None),
        ("option: bf16 autocast, all layers", None, True, None),
        (f"option: fp32, adapters on top {n} layers", top, False, None),
        (f"option: bf16 autocast, top {n} layers", top, True, None),
        (
            f"option: fp32, top {n} layers + trunk cache, first epoch (cache filled)",
            top,
            False,
            "first",
        ),
        (f"option: fp32, top {n} layers + trunk cache, every later epoch", top, False, "later"),
    ]
    lines = [
        "| step | configuration | ex/s | s/step (CPU s) | speed-up vs today | max |Δ loss| vs today |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kind, label in (("sft", "SFT"), ("sdpo", f"S-DPO K={K}")):
        base_rate, base_losses, top_losses = None, None, None
        for name, layers, bf16, trunk in variants:
            module = build_module(model_dir, kind, layers, args.seed, trunk=trunk is not None)
            module.policy.train()
            bs = batches(module, data, "fit", 4, args.seed)
            if kind == "sdpo":
                for b in bs:  # what the reference cache serves (adapter off, fp32, no grad)
                    with torch.no_grad(), module.policy.disable_adapter():
                        b["ref_logps"] = module.score(
                            b, b["completion_input_ids"], b["completion_attention_mask"]
                        ).logps
                module.trunk = None  # the reference pass above must not pre-fill the timed cache
            # default arguments bind this iteration's values (timed() calls them at once)
            empty = (lambda m=module: setattr(m, "trunk", None)) if trunk == "first" else None
            wall, cpu, losses = timed(
                lambda m=module, bs=bs, kind=kind, bf16=bf16: train_pass(m, bs, kind, bf16),
                args.repeats,
                before=empty,
            )
            n_ex = sum(len(b["index"]) for b in bs)
            rate = n_ex / wall
            if layers is None and not bf16:
                base_rate, base_losses = rate, losses
            if layers is not None and not bf16 and trunk is None:
                top_losses = losses
            # all-layer options against today; the trunk cache against the same top-layer model
            ref = base_losses if layers is None else (top_losses if trunk else None)
            diff = (
                None if ref is None else max(abs(a - b) for a, b in zip(losses, ref, strict=False))
            )
            note = (
                "n/a (other model)"
                if diff is None
                else f"{diff:.1e}" + (" (vs top layers, fp32)" if trunk else "")
            )
            lines.append(
                f"| {label} | {name} | {rate:.2f} | {wall / len(bs):.2f} ({cpu / len(bs):.2f}) | "
                f"{rate / base_rate:.2f}× | {note} |"
            )
            print(f"  train {label} / {name}: {rate:.2f} ex/s", file=sys.stderr, flush=True)
            module = None  # frees the model before the next variant is built
    return lines


def eval_pass(
    module: Any, bs: list[dict[str, Any]], protocols: list[str], one_pass: bool, bf16: bool
):
    from sdpo_lightning.evaluation.evaluator import Evaluator

    ev = Evaluator("test", protocols, one_pass=one_pass)
    with autocast(bf16):
        return [r for b in bs for r in ev.update(module.eval_model(), b)]


def agreement(a: list[dict], b: list[dict]) -> str:
    parts = []
    if "parsed" in a[0]:
        parts.append(
            f"answers {sum(x['parsed'] == y['parsed'] for x, y in zip(a, b, strict=False))}/{len(a)}"
        )
    if "scores" in a[0]:
        ranks = sum(x["target_rank"] == y["target_rank"] for x, y in zip(a, b, strict=False))
        diff = max(
            abs(s - t)
            for x, y in zip(a, b, strict=False)
            for s, t in zip(x["scores"], y["scores"], strict=False)
        )
        parts.append(f"ranks {ranks}/{len(a)}, max |Δ score| {diff:.1e}")
    return ", ".join(parts)


def hr1(recs: list[dict]) -> str:
    parts = []
    if "correct" in recs[0]:
        parts.append(f"gen {sum(r['correct'] for r in recs) / len(recs):.3f}")
    if "target_rank" in recs[0]:
        parts.append(f"rank {sum(r['target_rank'] == 1 for r in recs) / len(recs):.3f}")
    return ", ".join(parts)


def gen_tokens(module: Any, recs: list[dict]) -> str:
    if "generated" not in recs[0]:
        return "—"
    n = [len(module.tokenizer(r["generated"], add_special_tokens=False)["input_ids"]) for r in recs]
    return f"{statistics.mean(n):.1f}"


def eval_module(args: argparse.Namespace, model_dir: Path) -> Any:
    """The random-B LoRA model, or with ``--eval-adapter`` a trained adapter (no trunk cache:
    the one-pass evaluator runs the packed forward itself, each test row is seen once)."""
    if args.eval_adapter is None:
        return build_module(model_dir, "sft", None, args.seed)
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import EvalArgs, ModelArgs, ObjectiveArgs

    source = ModelArgs(model_name_or_path=str(model_dir), init_adapter=str(args.eval_adapter))
    module = SDPOModule(
        source=source,
        objective=ObjectiveArgs(name="sft"),
        eval=EvalArgs(max_new_tokens=args.max_new_tokens),
    )
    module.configure_model()
    return module


def eval_table(args: argparse.Namespace, model_dir: Path, data: Path) -> list[str]:
    module = eval_module(args, model_dir)
    module.policy.eval()
    module.hparams.eval.max_new_tokens = args.max_new_tokens
    bs = batches(module, data, "test", args.eval_batch, args.seed)
    n = sum(len(b["index"]) for b in bs)
    both = ["generation", "ranking"]
    cases = [
        ("generation", ["generation"], False),
        ("generation, constrained", ["generation"], True),
        ("ranking", ["ranking"], False),
        ("generation + ranking (quickstart configs)", both, False),
        ("generation, constrained + ranking (the LastFM study's configs)", both, True),
    ]
    lines = [
        "| protocol | before rows/s | after rows/s | speed-up | generated tokens/row before → after | "
        "after agrees with before | HR@1 before / after | bf16 option rows/s (× before) | bf16 agrees with fp32 |",
        "|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    persisted: list[str] = []
    from sdpo_lightning.scoring.trunk_cache import frozen_layer_count

    top_only = (
        frozen_layer_count(module.policy) > 0
    )  # adapters on the top layers: the trunk applies
    for name, protocols, constrained in cases:
        module.hparams.eval.constrained = constrained
        wb, _, before = timed(
            lambda p=protocols: eval_pass(module, bs, p, False, False), args.repeats
        )
        wa, _, after = timed(
            lambda p=protocols: eval_pass(module, bs, p, True, False), args.repeats
        )
        wh, _, half = timed(lambda p=protocols: eval_pass(module, bs, p, True, True), args.repeats)
        lines.append(
            f"| {name} | {n / wb:.2f} | {n / wa:.2f} | {wb / wa:.2f}× | "
            f"{gen_tokens(module, before)} → {gen_tokens(module, after)} | {agreement(after, before)} | "
            f"{hr1(before)} / {hr1(after)} | {n / wh:.2f} ({wb / wh:.2f}×) | {agreement(half, after)}, HR@1 {hr1(half)} |"
        )
        print(
            f"  eval {name}: before {n / wb:.2f}, after {n / wa:.2f}, bf16 {n / wh:.2f} rows/s",
            file=sys.stderr,
            flush=True,
        )
        if top_only and ("ranking" in protocols or constrained):  # what the served pass serves
            persisted.append(trunk_row(args, module, bs, name, protocols, n / wb, after))
    if persisted:
        lines += [
            "",
            "Persisted lower layers (`model.scoring.eval_trunk_dir`, fp32): the first test of the rows computes and "
            "writes them, every later test (another adapter on the same base) reads them and runs the top layers only.",
            "",
            "| protocol | before rows/s | first test rows/s (× before) | later test rows/s (× before) | "
            "once per later test: read + digest (s) | later agrees with after |",
            "|---|---:|---:|---:|---:|---|",
            *persisted,
        ]
    return lines


def trunk_row(
    args: argparse.Namespace,
    module: Any,
    bs: list[dict[str, Any]],
    name: str,
    protocols: list[str],
    before: float,
    after: list[dict],
) -> str:
    """One row of the persisted-trunk table: the first test (nothing on disk: fill + write) and a
    later one (read from disk, the load included), against the plain one-pass records."""
    import shutil

    n = sum(len(b["index"]) for b in bs)
    directory = args.work_dir / "eval_trunk"
    module.hparams.scoring.eval_trunk_dir = str(directory)

    def nothing_on_disk() -> None:
        shutil.rmtree(directory, ignore_errors=True)
        module._eval_trunk = None

    def first_test() -> list[dict]:
        recs = eval_pass(module, bs, protocols, True, False)
        module._save_eval_trunk()
        return recs

    wf, _, _ = timed(first_test, args.repeats, before=nothing_on_disk)
    module._eval_trunk = None  # a later test: read the file (and digest the lower layers) once
    t0 = time.perf_counter()
    module.eval_trunk()
    load = time.perf_counter() - t0
    wl, _, later = timed(lambda p=protocols: eval_pass(module, bs, p, True, False), args.repeats)
    module.hparams.scoring.eval_trunk_dir = None
    module._eval_trunk = None
    print(
        f"  eval {name}, persisted trunk: first {n / wf:.2f}, later {n / wl:.2f} rows/s",
        file=sys.stderr,
        flush=True,
    )
    return (
        f"| {name} | {before:.2f} | {n / wf:.2f} ({n / wf / before:.2f}×) | {n / wl:.2f} ({n / wl / before:.2f}×) | "
        f"{load:.2f} | {agreement(later, after)} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--train-data", type=Path, default=SHARED / "data" / "lastfm" / "train.json")
    ap.add_argument("--eval-data", type=Path, default=SHARED / "data" / "lastfm" / "valid.json")
    ap.add_argument("--train-rows", type=int, default=8, help="training rows (batches of 4)")
    ap.add_argument("--eval-rows", type=int, default=16)
    ap.add_argument("--eval-batch", type=int, default=8, help="the LastFM configs' eval_batch_size")
    ap.add_argument(
        "--max-new-tokens", type=int, default=32, help="the LastFM configs' max_new_tokens"
    )
    ap.add_argument(
        "--top-layers",
        type=int,
        default=6,
        help="adapters on this many top layers (options; the study's 6)",
    )
    ap.add_argument(
        "--eval-adapter",
        type=Path,
        help="a trained peft adapter for the evaluation table (e.g. "
        "benchmarks/quality/adapters/sft) instead of the random-B LoRA model",
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="timed passes per configuration (median)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", choices=["train", "eval"], help="leave one table out")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "sdpo_step_cost")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.model, args.work_dir)
    n_layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    load0, t0 = os.getloadavg(), time.perf_counter()
    train = (
        []
        if args.skip == "train"
        else train_table(
            args,
            model_dir,
            rows_file(args.train_data, args.train_rows, args.seed, args.work_dir),
            n_layers,
        )
    )
    evals = (
        []
        if args.skip == "eval"
        else eval_table(
            args, model_dir, rows_file(args.eval_data, args.eval_rows, args.seed, args.work_dir)
        )
    )
    load1 = os.getloadavg()
    print(
        f"# Throughput: {args.model.name} fp32, training with LoRA r={LORA['r']} on {'/'.join(t[0] for t in LORA['target_modules'])}, "
        f"torch {torch.__version__}, {threads} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(
        f"load average (1/5/15 min) {' '.join(f'{x:.2f}' for x in load0)} at start, "
        f"{' '.join(f'{x:.2f}' for x in load1)} at the end, on {os.cpu_count()} CPUs; {time.perf_counter() - t0:.0f} s"
    )
    print(
        f"command: {' '.join(['python', 'benchmarks/throughput.py'] + (argv if argv is not None else sys.argv[1:]))}"
    )
    if train:
        print(f"\n## Training, {args.train_rows} rows of {args.train_data.name} in batches of 4\n")
        print("\n".join(train))
    if evals:
        print(
            f"\n## Evaluation, {args.eval_rows} rows of {args.eval_data.name} in batches of {args.eval_batch}, "
            f"max_new_tokens {args.max_new_tokens}; model: "
            f"{'the adapter ' + str(args.eval_adapter) if args.eval_adapter else 'the training table random-B LoRA'}\n"
        )
        print("\n".join(evals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
