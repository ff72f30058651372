"""The reference log-prob cache.

The reference model is frozen, so the log-likelihood it gives each candidate of each
example never changes: score every candidate once (shared prefix, no grad), keep the table
``(n_examples, M)`` on disk, and reuse it across epochs, runs and any negative sampling.
The same table ranks candidates for hard-negative mining.

The cache key is a SHA-256 over (a) the reference's identity — model source, GGUF file,
tiny config and init seed, dtype, the SFT adapter's files — with size and modification time
of local model files, and (b) the exact token ids of every prompt and candidate completion
of the split, which cover the data file's content, the template, the seed of the template
choice, the tokenizer and ``max_length``. Any change gives a new key and a rebuild.

Under multi-process training each process scores an equal share (rank-strided, padded so
that every process runs the same number of forwards, as ZeRO-3 needs) and the shares are
all-gathered; process 0 writes the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from sdpo_lightning.data.collate import make_collate

log = logging.getLogger(__name__)


def _file_stamp(path: Path) -> list[Any]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(f.relative_to(path) if path.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def reference_identity(hparams: Any) -> dict[str, Any]:
    """What defines the reference model (hashed into the cache key)."""
    ident: dict[str, Any] = {
        k: hparams.get(k) for k in ("model_name_or_path", "gguf_file", "tiny_config", "init_seed", "dtype", "init_adapter")
    }
    for k in ("model_name_or_path", "init_adapter"):
        if ident[k] and Path(ident[k]).exists():
            ident[f"{k}_files"] = _file_stamp(Path(ident[k]))
    if ident.get("init_adapter"):
        for f in sorted(Path(ident["init_adapter"]).glob("adapter_model.*")):
            ident.setdefault("adapter_sha256", []).append(hashlib.sha256(f.read_bytes()).hexdigest())
    return ident


def split_key(identity: dict[str, Any], dataset: Any) -> str:
    """SHA-256 of the reference identity and every token id of the split."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for enc in dataset.encoded:
        h.update(json.dumps([enc.prompt_ids, enc.candidate_ids]).encode())
    return h.hexdigest()


class ReferenceCache:
    """Reference log-likelihoods of every candidate, per split.

    Args:
        tables: split name → ``(n_examples, M)`` float32 table (``-inf`` for padding).
    """

    def __init__(self, tables: dict[str, torch.Tensor]) -> None:
        self.tables = tables

    def lookup(self, split: str, index: torch.Tensor) -> torch.Tensor:
        """Rows of the given example indices → (B, M)."""
        if split not in self.tables:
            raise KeyError(f"no cached reference scores for split {split!r}")
        return self.tables[split][index.cpu()]

    @classmethod
    def build(cls, module: Any, datamodule: Any, root: str | Path, batch_size: int | None = None) -> "ReferenceCache":
        """Load or compute the tables of the data module's train and validation splits."""
        root = Path(root)
        identity = reference_identity(module.hparams)
        tables = {}
        for split, dataset in datamodule.datasets.items():
            if split not in ("fit", "validate"):
                continue
            key = split_key(identity, dataset)
            path = root / f"{split}-{key[:20]}.pt"
            if path.is_file():
                blob = torch.load(path, map_location="cpu")
                if blob.get("key") == key:
                    tables[split] = blob["scores"]
                    log.info("reference cache hit: %s", path)
                    continue
            start = time.perf_counter()
            bs = batch_size or datamodule.hparams.eval_batch_size or datamodule.hparams.batch_size
            scores = score_dataset(module, dataset, bs, datamodule.tokenizer.pad_token_id)
            log.info("reference cache built for %s (%d examples) in %.1fs", split, len(dataset), time.perf_counter() - start)
            if module.trainer is None or module.trainer.is_global_zero:
                root.mkdir(parents=True, exist_ok=True)
                torch.save({"key": key, "scores": scores}, path)
            tables[split] = scores
        if module.trainer is not None:
            module.trainer.strategy.barrier("reference_cache")
        return cls(tables)


@torch.no_grad()
def score_dataset(module: Any, dataset: Any, batch_size: int, pad_token_id: int) -> torch.Tensor:
    """Score every candidate of every example with the reference → (n_examples, M)."""
    trainer = module.trainer
    world = trainer.world_size if trainer is not None else 1
    rank = trainer.global_rank if trainer is not None else 0
    n = len(dataset)
    mine = list(range(rank, n, world))
    steps = -(-((n + world - 1) // world) // batch_size)  # same count on every rank
    collate = make_collate(pad_token_id)
    m = max(len(e.candidate_ids) for e in dataset.encoded)
    out = torch.full((n, m), float("-inf"))
    was_training = module.policy.training
    module.policy.eval()
    try:
        with module.reference_scorer() as (model, scorer):
            for s in range(steps):
                idx = mine[s * batch_size:(s + 1) * batch_size] or mine[:1] or [0]
                batch = collate([dataset[i] for i in idx])
                batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                logps = scorer(batch, model).float()  # (b, M)
                logps = logps.masked_fill(~batch["candidate_mask"], float("-inf")).cpu()
                out[torch.tensor(idx), : logps.shape[1]] = logps
    finally:
        module.policy.train(was_training)
    if world > 1:
        gathered = trainer.strategy.all_gather(out.to(module.device)).cpu()  # (world, n, m)
        for r in range(world):
            rows = torch.arange(r, n, world)
            out[rows] = gathered[r][rows]
    return out
