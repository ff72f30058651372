"""Cost of one on-policy refresh against one training epoch, on the quickstart tiny model.

Data: the quickstart synthetic data (``configs/quickstart_data.yaml``: 200 items, 3-item
histories), its ``catalogue.json`` (``sdpo-prepare catalogue``), all-item training rows
(``data.train_protocol all_item``: history-only ``movies`` prompts, the target + M catalogue
draws). Model: the quickstart tiny LLaMA (2 layers, hidden 128; random weights: the cost does
not depend on what it learned, except the beam search's pruning) with the S-DPO stage's LoRA
(r 16 on every projection), K = 4.

Timed over the same ``--rows`` training rows in batches of ``--batch``:

* **train**: one S-DPO step per batch (random negatives, live reference, forward + backward +
  AdamW step) — the training epoch the refreshes are compared with;
* **on_policy refresh**: the policy's score of every drawn candidate (``policy_candidate_scores``:
  one no-grad shared-prefix pass over the prompt and the M + 1 candidates);
* **on_policy_beam refresh**: the policy's top K + 1 catalogue items by constrained beam search
  (``CatalogueBeamNegatives.beams``: beam width K + 1, history excluded), and the exact search
  (beam width = the catalogue size, ``data.on_policy_beam_width``).

Usage::

    python benchmarks/onpolicy_refresh.py --rows 512 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def _timed(fn, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512, help="training rows timed (default 512)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=19, help="M, catalogue draws per row")
    parser.add_argument("--k", type=int, default=4, help="negatives per row")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the data (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from sdpo_lightning.data.collate import make_collate, select_completions
    from sdpo_lightning.data.datamodule import RecDataModule
    from sdpo_lightning.data.prepare.cli import main as prepare_main
    from sdpo_lightning.data.synthetic import main as synthetic_main
    from sdpo_lightning.training.beam_negatives import CatalogueBeamNegatives
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.negatives import RandomNegatives
    from sdpo_lightning.training.objective_call import objective_loss

    work = args.work or Path(tempfile.mkdtemp(prefix="onpolicy_refresh_"))
    data = work / "data"
    if not (data / "train.json").is_file():
        synthetic_main(
            ["--out", str(data), "--config", str(REPO / "configs" / "quickstart_data.yaml")]
        )
    catalogue = data / "catalogue.json"
    if not catalogue.is_file():
        files = [str(data / f"{s}.json") for s in ("train", "valid", "test")]
        prepare_main(["catalogue", *files, "--out", str(catalogue)])

    sft = yaml.safe_load((REPO / "configs" / "quickstart_sft.yaml").read_text())
    sdpo = yaml.safe_load((REPO / "configs" / "quickstart_sdpo.yaml").read_text())
    module = SDPOModule(
        source={
            "model_name_or_path": None,
            "tokenizer_path": str(data / "tokenizer"),
            "tiny_config": sft["model"]["source"]["tiny_config"],
        },
        lora=sdpo["model"]["lora"],
        objective={"name": "sdpo", "beta": 1.0, "num_negatives": args.k},
        scoring={"reference": "live"},
    )
    module.configure_model()
    dm = RecDataModule(
        train_file=str(data / "train.json"),
        prompt_templates="movies",
        num_negatives=args.k,
        batch_size=args.batch,
        max_length=512,
        train_protocol="all_item",
        catalogue_file=str(catalogue),
        catalogue_candidates=args.candidates,
    )
    dm.connect(module.tokenizer)
    dm.setup("fit")
    train = dm.datasets["fit"]
    rows = min(args.rows, len(train))
    collate = make_collate(module.tokenizer.pad_token_id)
    batches = [
        collate([train[(i, 0)] for i in range(s, min(s + args.batch, rows))])
        for s in range(0, rows, args.batch)
    ]

    obj = module.hparams.objective
    opt = torch.optim.AdamW([p for p in module.policy.parameters() if p.requires_grad], lr=1e-3)
    selector = RandomNegatives(0)

    def step(batch):
        batch = select_completions(batch, selector.select(batch, args.k, 0))
        ids, mask = batch["completion_input_ids"], batch["completion_attention_mask"]
        scored = module.score(batch, ids, mask)
        ref = module.reference_logps(batch, ids, mask)
        loss = objective_loss(obj, scored.logps, scored.n_tokens, ref).losses.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    beam = CatalogueBeamNegatives(
        lambda: module.policy,
        dm.catalogue,
        module.tokenizer,
        dm.train_prompts.completion_prefix,
        lambda: 0,
    )
    module.policy.train()
    step(batches[0])  # warm-up (allocations, kernels)
    t_train = _timed(step, batches)
    t_scores = _timed(module.policy_candidate_scores, batches)
    t_beam = _timed(lambda b: beam.beams(b, args.k), batches)
    beam.beam_width = len(dm.catalogue)
    t_exact = _timed(lambda b: beam.beams(b, args.k), batches)

    n_train = len(train)
    print(
        f"quickstart tiny LLaMA + LoRA r16, K={args.k}, M={args.candidates} catalogue draws, "
        f"{len(dm.catalogue)} items, {rows} of {n_train} training rows, batch {args.batch}, "
        f"{args.threads} thread(s)"
    )
    print("| pass | s over the rows | ms / row | x one training epoch | s per full epoch (est.) |")
    print("|---|---|---|---|---|")
    for name, t in (
        ("train step (S-DPO, live reference)", t_train),
        ("on_policy refresh (score M + 1 candidates)", t_scores),
        ("on_policy_beam refresh (beam search, width K + 1)", t_beam),
        (f"on_policy_beam refresh (exact, width {len(dm.catalogue)})", t_exact),
    ):
        print(
            f"| {name} | {t:.2f} | {1000 * t / rows:.2f} | {t / t_train:.2f} | {t * n_train / rows:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
