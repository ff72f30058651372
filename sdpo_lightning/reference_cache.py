"""The reference log-prob cache.

The reference model is frozen, so the log-likelihood it gives each candidate of each
example never changes: score every candidate once (shared prefix, no grad), keep the table
``(n_examples, M)`` on disk, and reuse it across epochs, runs and any negative sampling.
The same table ranks candidates for hard-negative mining.

The cache key is a SHA-256 over

* the reference's identity: model source, GGUF file, tiny config and init seed, dtype,
  attention implementation, the SFT adapter's files (content hash), and size and
  modification time of local model files (hashing a multi-GB checkpoint would cost more
  than the cache saves);
* the data: the SHA-256 of the split's file, the prompt templates, the template-choice
  seed, separator, completion prefix, ``max_length`` and any example limit;
* the tokenizer: a hash of its full serialization (vocabulary, merges, special tokens);
* every token id of every prompt and candidate completion of the split, which ties the
  table to exactly what is scored, whatever code produced it.

Any change gives a new key and a rebuild; the old file stays (it is valid for its key).

Under multi-process training each process scores an equal share (rank-strided, padded so
that every process runs the same number of forwards, as ZeRO-3 needs) and the shares are
all-gathered; global rank 0 writes the file. Whether the file can be reused is decided
collectively (all processes must see it), so the processes never diverge.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from sdpo_lightning.data.collate import make_collate

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SPLITS = ("fit", "validate")


# ---------------------------------------------------------------------------- key parts
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_stamp(path: Path) -> list[Any]:
    """(name, size, mtime_ns) of a file or of every file under a directory."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    base = path if path.is_dir() else path.parent
    return [[str(f.relative_to(base)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def reference_identity(hparams: Any) -> dict[str, Any]:
    """What defines the reference model (hashed into the cache key)."""
    keys = ("model_name_or_path", "gguf_file", "tiny_config", "init_seed", "dtype", "init_adapter",
            "attn_implementation")
    ident: dict[str, Any] = {k: hparams.get(k) for k in keys}
    if ident["model_name_or_path"] is None:
        from sdpo_lightning.models import TINY_DEFAULTS

        ident["tiny_defaults"] = TINY_DEFAULTS  # the in-code model's base config
    else:
        src = Path(ident["model_name_or_path"])
        if ident["gguf_file"]:
            src = src / ident["gguf_file"]
        if src.exists():
            ident["model_files"] = _file_stamp(src)
    if ident["init_adapter"]:
        adapter = Path(ident["init_adapter"])
        ident["adapter_sha256"] = {
            f.name: _sha256_file(f) for f in sorted(adapter.glob("adapter_*")) if f.is_file()
        }
    return ident


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's full serialization (fast) or vocabulary (slow)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def data_identity(datamodule: Any, split: str) -> dict[str, Any]:
    """The data side of the key: file content, templates, seed, ``max_length``, tokenizer."""
    hp = datamodule.hparams
    path = getattr(datamodule, "files", {}).get(split)
    prompts = datamodule.prompts
    return {
        "split": split,
        "file_sha256": _sha256_file(Path(path)) if path and Path(path).is_file() else path,
        "templates": list(prompts.templates),
        "template_seed": prompts.seed,
        "separator": prompts.separator,
        "completion_prefix": prompts.completion_prefix,
        "max_length": hp.get("max_length"),
        "lenient": hp.get("lenient"),
        "limit_val_examples": hp.get("limit_val_examples") if split == "validate" else None,
        "tokenizer_sha256": tokenizer_fingerprint(datamodule.tokenizer),
    }


def token_digest(dataset: Any) -> str:
    """SHA-256 of every prompt and candidate token id of a split, in order."""
    h = hashlib.sha256()
    for enc in dataset.encoded:
        h.update(json.dumps([enc.prompt_ids, enc.candidate_ids]).encode())
    return h.hexdigest()


def cache_key(identity: dict[str, Any], data: dict[str, Any], dataset: Any) -> str:
    """The cache key of one split: SHA-256 over reference, data identity and token ids."""
    blob = {"format": CACHE_FORMAT, "reference": identity, "data": data, "tokens": token_digest(dataset)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------- the cache
class ReferenceCache:
    """Reference log-likelihoods of every candidate, per split.

    Args:
        tables: split name → ``(n_examples, M)`` float32 table (``-inf`` for padding).
        stats: split name → ``{"hit", "seconds", "n_examples", "path", "key"}`` of the
            last :meth:`build` (``seconds`` is the scoring time, 0 on a hit).
    """

    def __init__(self, tables: dict[str, torch.Tensor], stats: dict[str, dict[str, Any]] | None = None) -> None:
        self.tables = tables
        self.stats = stats or {}

    def lookup(self, split: str, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Rows of the given example indices → (B, M) float32 on the CPU."""
        if split not in self.tables:
            raise KeyError(f"no cached reference scores for split {split!r} (have {sorted(self.tables)})")
        table = self.tables[split]
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= table.shape[0]):
            raise IndexError(f"example index out of range for the {split!r} cache of {table.shape[0]} rows")
        return table[index]

    @classmethod
    def for_module(cls, module: Any) -> "ReferenceCache":
        """Load or build the tables of an attached module's data module, in
        ``model.reference_cache_dir`` (default ``<default_root_dir>/reference_cache``)."""
        trainer = module.trainer
        root = module.hparams.get("reference_cache_dir") or os.path.join(trainer.default_root_dir, "reference_cache")
        return cls.build(module, trainer.datamodule, root)

    @staticmethod
    def path_for(root: str | Path, split: str, key: str) -> Path:
        return Path(root) / f"{split}-{key[:20]}.pt"

    @classmethod
    def build(
        cls,
        module: Any,
        datamodule: Any,
        root: str | Path,
        batch_size: int | None = None,
        splits: Sequence[str] = SPLITS,
    ) -> "ReferenceCache":
        """Load, or compute and save, the tables of the data module's ``splits``.

        Every process must call this (it is collective under multi-process training).
        """
        if datamodule is None:
            raise RuntimeError("`reference: cached` needs the RecDataModule (trainer.datamodule is None)")
        root = Path(root)
        trainer = getattr(module, "_trainer", None)
        identity = reference_identity(module.hparams)
        bs = batch_size or datamodule.hparams.get("eval_batch_size") or datamodule.hparams.batch_size
        tables: dict[str, torch.Tensor] = {}
        stats: dict[str, dict[str, Any]] = {}
        with contextlib.ExitStack() as stack:
            ref: tuple[Any, Callable] | None = None  # entered once, on the first miss
            for split in splits:
                dataset = datamodule.datasets.get(split)
                if dataset is None:
                    continue
                key = cache_key(identity, data_identity(datamodule, split), dataset)
                path = cls.path_for(root, split, key)
                scores = _load(path, key, len(dataset))
                hit = scores is not None
                if trainer is not None and trainer.world_size > 1:
                    hit = trainer.strategy.reduce_boolean_decision(hit, all=True)
                if hit:
                    log.info("reference cache hit for %s: %s", split, path)
                    tables[split] = scores
                    stats[split] = {"hit": True, "seconds": 0.0, "n_examples": len(dataset), "path": str(path), "key": key}
                    continue
                if ref is None:
                    ref = stack.enter_context(module.reference_scorer())
                start = time.perf_counter()
                scores = score_dataset(module, dataset, bs, datamodule.tokenizer.pad_token_id, *ref)
                seconds = time.perf_counter() - start
                log.info("reference cache built for %s (%d examples) in %.1fs: %s", split, len(dataset), seconds, path)
                if trainer is None or trainer.is_global_zero:
                    _save(path, {"format": CACHE_FORMAT, "key": key, "scores": scores, "n_examples": len(dataset),
                                 "seconds": seconds})
                tables[split] = scores
                stats[split] = {"hit": False, "seconds": seconds, "n_examples": len(dataset), "path": str(path), "key": key}
        if trainer is not None and trainer.world_size > 1:
            trainer.strategy.barrier("reference_cache")
        return cls(tables, stats)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode (dropout off) and restore every submodule's mode after."""
    saved = [(m, m.training) for module in modules if module is not None for m in module.modules()]
    for module in modules:
        if module is not None:
            module.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def _load(path: Path, key: str, n_examples: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: rebuild it
        log.warning("ignoring unreadable reference cache %s: %s", path, err)
        return None
    scores = blob.get("scores") if isinstance(blob, dict) else None
    if blob.get("key") != key or not torch.is_tensor(scores) or scores.shape[0] != n_examples:
        return None
    return scores.float()


def _save(path: Path, blob: dict[str, Any]) -> None:
    """Write atomically (temporary file + rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def score_dataset(
    module: Any,
    dataset: Any,
    batch_size: int,
    pad_token_id: int,
    model: torch.nn.Module | None = None,
    scorer: Callable[[dict[str, Any], torch.nn.Module], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Score every candidate of every example with the reference → (n_examples, M).

    ``model`` and ``scorer`` come from ``module.reference_scorer()`` (entered here when not
    given). Each process scores the examples ``rank::world``, longest prompts first in
    batches of similar length; the padding slots of the table hold ``-inf``.
    """
    if model is None or scorer is None:
        with module.reference_scorer() as (model, scorer):
            return score_dataset(module, dataset, batch_size, pad_token_id, model, scorer)
    trainer = getattr(module, "_trainer", None)
    world = trainer.world_size if trainer is not None else 1
    rank = trainer.global_rank if trainer is not None else 0
    n = len(dataset)
    if n == 0:
        return torch.empty(0, 0)
    mine = sorted(range(rank, n, world), key=lambda i: (-len(dataset.encoded[i].prompt_ids), i))
    per_rank = -(-n // world)  # ceil: the largest share
    steps = -(-per_rank // batch_size)  # the same number of forwards on every rank
    collate = make_collate(pad_token_id)
    m = max(len(e.candidate_ids) for e in dataset.encoded)
    out = torch.full((n, m), float("-inf"))
    with eval_mode(module.policy, model):
        for s in range(steps):
            idx = mine[s * batch_size:(s + 1) * batch_size] or mine[:1] or [0]  # dummy work keeps ranks in step
            batch = collate([dataset[i] for i in idx])
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logps = scorer(batch, model).float()  # (b, M_batch)
            logps = logps.masked_fill(~batch["candidate_mask"], float("-inf")).cpu()
            out[torch.tensor(idx), : logps.shape[1]] = logps
    if world > 1:
        gathered = trainer.strategy.all_gather(out.to(module.device)).cpu()  # (world, n, m)
        for r in range(world):
            rows = torch.arange(r, n, world)
            out[rows] = gathered[r][rows]
    return out
