"""Scaling table: setup, first step, reference cache, epoch and test cost against rows and K.

Old (eager tokenization of the whole split in ``setup`` + ``full`` reference-cache build) and new
(compact records, lazy tokenization + ``lazy`` cache) are measured in the same run, each
configuration in a fresh subprocess so its peak RSS (``VmHWM``) is its own. Data: the
MovieLens-100K prepared train (``sdpo-prepare movielens-100k``), first N rows. Model: a tiny
LLaMA (hidden 32, 2 layers) with SmolLM2's tokenizer, so the figures are the pipeline's
data and bookkeeping cost, not SmolLM2's FLOPs (the real model's step cost is in
``step_cost.py``). Epoch and test columns are extrapolated from a fixed number of timed
steps / rows; old figures that would take minutes (eager tokenization or a full cache build
above ``--old-max`` rows) are extrapolated linearly from the largest measured size and
marked ``~``.

    python benchmarks/scaling.py --data /tmp/ml100k            # prepared dir (train.json)
    python benchmarks/scaling.py --data /tmp/ml100k --sizes 1000,10000 --ks 1,3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from timing import _status_mb  # noqa: E402

GGUF = REPO.parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
)
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _tokenizer_dir(work: Path) -> Path:
    out = work / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        from sdpo_lightning.modeling.models import load_tokenizer

        load_tokenizer(str(GGUF)).save_pretrained(str(out))
    return out


def _subset(data: Path, n: int, work: Path) -> Path:
    out = work / f"train-{n}.json"
    if not out.is_file():
        rows = json.loads((data / "train.json").read_text())[:n]
        out.write_text(json.dumps(rows))
    return out


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    from sdpo_lightning.data.collate import make_collate, negative_indices, select_completions
    from sdpo_lightning.data.datamodule import RecDataModule
    from sdpo_lightning.data.prompts import PromptBuilder
    from sdpo_lightning.data.readers import load_examples
    from sdpo_lightning.scoring.reference_cache import ReferenceCache, score_dataset
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import ModelArgs, ObjectiveArgs, ScoringArgs
    from sdpo_lightning.training.objectives import preference_loss

    out: dict[str, Any] = {}
    module = SDPOModule(
        source=ModelArgs(tokenizer_path=cfg["tokenizer"], tiny_config=TINY),
        lora=LORA,
        scoring=ScoringArgs(reference="cached"),
        objective=ObjectiveArgs(num_negatives=cfg["k"]),
    )
    module.configure_model()
    tok = module.tokenizer
    bs, k = cfg["batch_size"], cfg["k"]
    t0 = time.perf_counter()
    if cfg["mode"] == "old":  # today's eager path: read all, encode all, before the first step
        examples = load_examples(cfg["file"], min_candidates=k + 1).examples
        prompts, titles = PromptBuilder("movies", 0), {}
        _ = [prompts.encode(ex, i, tok, 512, titles) for i, ex in enumerate(examples)]
    dm = RecDataModule(train_file=cfg["file"], batch_size=bs, num_negatives=k, max_length=512)
    dm.tokenizer = tok
    dm.setup("fit")
    ds = dm.datasets["fit"]
    collate = make_collate(tok.pad_token_id)
    batch = collate([ds[i] for i in range(bs)])
    out["first_batch_s"] = time.perf_counter() - t0
    root = Path(cfg["work"]) / f"cache-{cfg['mode']}-{cfg['n']}-{os.getpid()}"
    t1 = time.perf_counter()
    if cfg["mode"] == "old":
        if cfg["score_all"]:
            with module.reference_scorer() as ref:
                score_dataset(module.reference_source(), ds, 8, tok.pad_token_id, *ref)
            out["cache_s"] = time.perf_counter() - t1
        cache = ReferenceCache({"fit": torch.zeros(len(ds), 20)})
    else:
        cache = ReferenceCache.open(module.reference_source(), dm, root, splits=("fit",))
    opt = torch.optim.AdamW([p for p in module.policy.parameters() if p.requires_grad], lr=1e-4)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    steps, step_s, cache_s = cfg["steps"], [], 0.0
    for s in range(steps):
        t = time.perf_counter()
        batch = collate([ds[i] for i in order[s * bs : (s + 1) * bs]])
        c = time.perf_counter()
        scores = (
            cache.scores_for(module.reference_source(), "fit", batch)
            if cfg["mode"] == "new"
            else cache.tables["fit"][batch["index"]]
        )
        cache_s += time.perf_counter() - c
        batch = select_completions(batch, negative_indices(batch, k, "random", 0, 0))
        ref = torch.gather(scores, 1, batch["completion_index"])
        pol = module.score(
            batch, batch["completion_input_ids"], batch["completion_attention_mask"]
        ).logps
        loss = preference_loss(
            "sdpo", pol[:, 0], pol[:, 1:], ref[:, 0], ref[:, 1:], 1.0
        ).losses.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_s.append(time.perf_counter() - t - (time.perf_counter() - c if False else 0))
        if s == 0:
            out["first_step_s"] = (
                out["first_batch_s"] + (out.get("cache_s", 0.0)) + (time.perf_counter() - t)
            )
    out["step_s"] = sorted(step_s)[len(step_s) // 2]
    if cfg["mode"] == "new":
        out["cache_s"] = cache_s  # the lazy cost of the rows these steps used
        out["cache_rows"] = cache.stats["fit"]["scored"]
    # test cost: ranking every candidate of a few rows (shared prefix, no grad)
    t2 = time.perf_counter()
    with torch.no_grad():
        for s in range(cfg["test_batches"]):
            b = collate([ds[i] for i in range(s * bs, (s + 1) * bs)])
            module.score(
                b, b["candidate_input_ids"], b["candidate_attention_mask"], mode="shared_prefix"
            )
    out["test_s_per_row"] = (time.perf_counter() - t2) / (cfg["test_batches"] * bs)
    out["rows"] = len(ds)
    out["peak_rss_mb"] = _status_mb()["VmHWM"]
    return out


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": str(REPO),
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {cfg['mode']} n={cfg['n']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _f(x: float | None, tilde: bool = False, spec: str = ".1f") -> str:
    return "—" if x is None else ("~" if tilde else "") + format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", type=Path, default=Path("/tmp/ml100k"), help="prepared MovieLens-100K directory"
    )
    ap.add_argument("--sizes", default="1000,10000,77287")
    ap.add_argument("--ks", default="1,3,7")
    ap.add_argument(
        "--old-max", type=int, default=10000, help="largest size whose old setup is measured"
    )
    ap.add_argument(
        "--score-max",
        type=int,
        default=1000,
        help="largest size whose full cache build is measured",
    )
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument(
        "--prepare-seconds", type=float, default=None, help="measured `sdpo-prepare` time to print"
    )
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sdpo_scaling")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    tokdir = str(_tokenizer_dir(args.work))
    sizes = [int(x) for x in args.sizes.split(",")]
    total = len(json.loads((args.data / "train.json").read_text()))
    sizes = [min(n, total) for n in sizes]
    base = dict(
        tokenizer=tokdir,
        work=str(args.work),
        batch_size=args.batch_size,
        steps=args.steps,
        test_batches=2,
    )
    res: dict[tuple, dict] = {}
    for n in sizes:
        f = str(_subset(args.data, n, args.work)) if n < total else str(args.data / "train.json")
        res["new", n] = run({**base, "mode": "new", "n": n, "file": f, "k": 3, "score_all": False})
        if n <= args.old_max:
            res["old", n] = run(
                {**base, "mode": "old", "n": n, "file": f, "k": 3, "score_all": n <= args.score_max}
            )
    bs = args.batch_size
    measured_old = [n for n in sizes if ("old", n) in res]
    ref_n = max(measured_old)
    score_n = max(n for n in measured_old if "cache_s" in res["old", n])
    per_row_cache = res["old", score_n]["cache_s"] / score_n
    print(
        f"\nScaling on MovieLens-100K prepared train (first N rows), K=3, batch {bs}, tiny LLaMA "
        f"(hidden 32, 2 layers) + SmolLM2 tokenizer, 1 thread; `~` = extrapolated linearly; prepare (whole "
        f"dataset): {_f(args.prepare_seconds)} s\n"
    )
    print(
        "| rows | first step old / new (s) | cache old: full build / new: rows of "
        f"{args.steps} steps (s) | epoch, {args.steps} steps extrapolated (s) | test, ranking (s) | "
        "peak RSS old / new (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        new = res["new", n]
        old = res.get(("old", n))
        if old is None:
            first_old = res["old", ref_n]["first_batch_s"] * n / ref_n + per_row_cache * n
            rss_old, tilde = None, True
        else:
            cache_old = old.get("cache_s", per_row_cache * n)
            first_old, rss_old, tilde = (
                old["first_batch_s"] + cache_old,
                old["peak_rss_mb"],
                "cache_s" not in old,
            )
        cache_old = old["cache_s"] if old is not None and "cache_s" in old else per_row_cache * n
        epoch = new["step_s"] * (n // bs)
        print(
            f"| {n} | {_f(first_old, tilde)} / {_f(new['first_step_s'])} | "
            f"{_f(cache_old, old is None or 'cache_s' not in old)} / {_f(new['cache_s'], spec='.2f')} "
            f"({new['cache_rows']} rows) | ~{epoch:.0f} | ~{new['test_s_per_row'] * n:.0f} | "
            f"{_f(rss_old, spec='.0f')} / {new['peak_rss_mb']:.0f} |"
        )
    ks = [int(x) for x in args.ks.split(",")]
    n0 = sizes[0]
    f0 = str(_subset(args.data, n0, args.work)) if n0 < total else str(args.data / "train.json")
    print(
        f"\nAgainst K ({n0} rows, new path): the cache scores all 20 candidates of a row whatever K is\n"
    )
    print("| K | first step (s) | step (s) | lazy cache, per row (ms) |")
    print("|---:|---:|---:|---:|")
    for k in ks:
        r = (
            res["new", n0]
            if k == 3
            else run({**base, "mode": "new", "n": n0, "file": f0, "k": k, "score_all": False})
        )
        print(
            f"| {k} | {r['first_step_s']:.2f} | {r['step_s']:.3f} | {1000 * r['cache_s'] / max(1, r['cache_rows']):.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
