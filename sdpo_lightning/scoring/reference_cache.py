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
* the number of rows and the token ids of the first rows (a cheap probe of the encoding code);
  beside that every row stores a 64-bit digest of its own prompt and candidate token ids,
  checked on every lookup, so a row's scores are only ever used for exactly the ids scored.

Any change gives a new key (a new file); the old file stays (it is valid for its key).

Two ways to fill the table (``model.scoring.reference_cache_build``):

* ``lazy`` (the default where the reference is at hand every step: LoRA, or a frozen copy):
  a row is scored — all its candidates, one shared-prefix pass — the first time a batch
  needs it (before its negatives are drawn, so ``hard`` / ``tempered`` see every candidate's
  score), then looked up. The file is filled incrementally: written at the end of every
  training and validation epoch and of training, reused by later epochs, runs and samplers.
  Under multi-process training the decision to run a reference forward is collective (a
  process with nothing to score runs a dummy row, so ZeRO-3 ranks stay in step), and at each
  write the processes merge their rows (all-gather) before global rank 0 writes.
* ``full``: score every row of the splits before the first step (the default for full
  fine-tuning without a frozen copy, whose reference weights are gone after step one). Each
  process scores an equal share (rank-strided, padded to the same number of forwards) and
  the shares are all-gathered; global rank 0 writes the file.

The model side comes in as a :class:`ReferenceSource`: a scorer of every candidate of a batch,
the reference's identity, the device and the processes — never the LightningModule
(:meth:`SDPOModule.reference_source <sdpo_lightning.training.module.SDPOModule.reference_source>`
builds one); the data side as the set-up data module (its datasets, files and prompt settings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from sdpo_lightning.data.collate import make_collate
from sdpo_lightning.runtime.processes import SINGLE_PROCESS, Processes

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
SPLITS = ("fit", "validate")
BUILDS = ("auto", "lazy", "full")
PROBE_ROWS = 8

Score = Callable[[dict[str, Any]], torch.Tensor]  # batch → (B, M) reference log-likelihoods


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


def reference_identity(source: Any) -> dict[str, Any]:
    """What defines the reference model (hashed into the cache key).

    Args:
        source: the module's :class:`~sdpo_lightning.training.module_args.ModelArgs` (``hparams.source``)
            or a mapping of its fields (missing ones count as ``None``).
    """
    keys = (
        "model_name_or_path",
        "gguf_file",
        "tiny_config",
        "init_seed",
        "dtype",
        "init_adapter",
        "attn_implementation",
    )
    if isinstance(source, Mapping):
        ident: dict[str, Any] = {k: source.get(k) for k in keys}
    else:
        ident = {k: getattr(source, k) for k in keys}
    if ident["model_name_or_path"] is None:
        from sdpo_lightning.modeling.models import TINY_DEFAULTS

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
    specials = {
        k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def data_identity(datamodule: Any, split: str) -> dict[str, Any]:
    """The data side of the key: file content, templates, seed, ``max_length``, tokenizer."""
    hp = datamodule.hparams
    path = getattr(datamodule, "files", {}).get(split)
    prompts = datamodule.prompts
    catalogue_rows = hp.get("train_protocol", "candidate_list") == "all_item" and split in (
        "fit",
        "validate",
    )
    if (
        catalogue_rows
    ):  # history-only prompts, candidates drawn from the catalogue (docs/negatives.md)
        prompts = datamodule.train_prompts
    out = {
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
    if catalogue_rows:
        catalogue = hp.get("catalogue_file")
        out.update(
            train_protocol="all_item",
            catalogue_sha256=_sha256_file(Path(catalogue))
            if catalogue and Path(catalogue).is_file()
            else catalogue,
            catalogue_candidates=hp.get("catalogue_candidates"),
            catalogue_sampling=hp.get("catalogue_sampling"),
        )
    return out


def token_digest(dataset: Any) -> str:
    """SHA-256 of the row count and the token ids of the first :data:`PROBE_ROWS` rows (the
    other rows are checked one by one, by their stored digests, when looked up)."""
    h = hashlib.sha256(str(len(dataset)).encode())
    for i in range(min(PROBE_ROWS, len(dataset))):
        enc = dataset.encoded[i]
        h.update(json.dumps([enc.prompt_ids, enc.candidate_ids]).encode())
    return h.hexdigest()


def row_digests(dataset: Any) -> torch.Tensor:
    """The per-row token digests of every row (tokenizes the whole split) → (n,) int64."""
    return torch.tensor([dataset[i]["token_digest"] for i in range(len(dataset))], dtype=torch.long)


def cache_key(identity: dict[str, Any], data: dict[str, Any], dataset: Any) -> str:
    """The cache key of one split: SHA-256 over reference, data identity and token ids."""
    blob = {
        "format": CACHE_FORMAT,
        "reference": identity,
        "data": data,
        "tokens": token_digest(dataset),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------- the reference side
@dataclasses.dataclass(frozen=True)
class ReferenceSource:
    """What the cache reads of the model side.

    Args:
        scoring: opens a scoring session, a context manager yielding ``score(batch)`` → ``(B, M)``
            reference log-likelihood of every candidate of the batch (shared prefix, no grad,
            dropout off); entered once per build and per lazy fill.
        identity: the reference's identity (:func:`reference_identity`), hashed into the cache
            key; called when a split's table is opened or built.
        device: where batches go before scoring, and tables before an all-gather.
        processes: the processes sharing the work (rank, world size, collectives).
    """

    scoring: Callable[[], AbstractContextManager[Score]]
    identity: Callable[[], dict[str, Any]]
    device: torch.device | str = "cpu"
    processes: Processes = SINGLE_PROCESS

    @classmethod
    def from_score(
        cls,
        score: Score,
        identity: dict[str, Any],
        device: torch.device | str = "cpu",
        processes: Processes = SINGLE_PROCESS,
    ) -> ReferenceSource:
        """A source whose scorer is always at hand: a plain ``score(batch)`` callable."""
        return cls(lambda: contextlib.nullcontext(score), lambda: identity, device, processes)


# ---------------------------------------------------------------------------- the cache
class ReferenceCache:
    """Reference log-likelihoods of every candidate, per split, filled lazily or in full.

    Args:
        tables: split name → ``(n_examples, M)`` float32 table (``-inf`` for padding
            candidates, NaN for rows not scored yet).
        stats: split name → ``{"hit", "seconds", "n_examples", "path", "key", "scored",
            "filled"}``: ``hit`` whether a file was found, ``seconds`` the scoring time and
            ``scored`` the rows scored by this process in this run.
        filled: split name → (n,) bool, rows scored (default: all).
        digests: split name → (n,) int64 token digest of each filled row (default: unchecked).
    """

    def __init__(
        self,
        tables: dict[str, torch.Tensor],
        stats: dict[str, dict[str, Any]] | None = None,
        filled: dict[str, torch.Tensor] | None = None,
        digests: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.tables = tables
        self.stats = stats or {}
        self.filled = filled or {k: torch.ones(len(v), dtype=torch.bool) for k, v in tables.items()}
        self.digests = digests or {}
        self.dirty: set[str] = set()

    def lookup(self, split: str, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Rows of the given example indices → (B, M) float32 on the CPU (all must be scored)."""
        if split not in self.tables:
            raise KeyError(
                f"no cached reference scores for split {split!r} (have {sorted(self.tables)})"
            )
        table = self.tables[split]
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= table.shape[0]):
            raise IndexError(
                f"example index out of range for the {split!r} cache of {table.shape[0]} rows"
            )
        missing = index[~self.filled[split][index]]
        if missing.numel():
            raise KeyError(
                f"rows {missing.tolist()[:5]} of the {split!r} cache are not scored yet (use scores_for)"
            )
        return table[index]

    @torch.no_grad()
    def scores_for(
        self, source: ReferenceSource, split: str, batch: dict[str, Any]
    ) -> torch.Tensor:
        """Every candidate's reference score of the batch's rows → (B, M) on the CPU; rows not
        scored yet (or whose token digest differs) are scored now, all their candidates in one
        shared-prefix pass. Collective under multi-process training (call on every process).

        Args:
            source: the reference side.
            split: ``fit`` or ``validate``.
            batch: the collated batch (``index``, ``token_digest``, candidates).
        """
        src = source
        if split not in self.tables:
            raise KeyError(
                f"no cached reference scores for split {split!r} (have {sorted(self.tables)})"
            )
        index = batch["index"].cpu()
        digest = batch["token_digest"].cpu()
        ok = self.filled[split][index]
        if split in self.digests:
            ok &= self.digests[split][index] == digest
        missing = (~ok).nonzero().flatten()
        need = bool(missing.numel())
        if src.processes.world_size > 1:
            need = src.processes.reduce_boolean_decision(need, all=False)
        if need:
            rows = (
                missing if missing.numel() else torch.zeros(1, dtype=torch.long)
            )  # a dummy keeps ranks in step
            start = time.perf_counter()
            sub = _rows(batch, rows)
            with src.scoring() as score:
                logps = score(sub).float()  # (b, M_batch)
                logps = logps.masked_fill(~sub["candidate_mask"], float("-inf")).cpu()
            if missing.numel():
                table, where = self.tables[split], index[missing]
                table[where] = float("-inf")
                table[where, : logps.shape[1]] = logps
                self.filled[split][where] = True
                self.digests.setdefault(split, torch.zeros(len(table), dtype=torch.long))[where] = (
                    digest[missing]
                )
                self.dirty.add(split)
                st = self.stats[split]
                st["scored"] += int(missing.numel())
                st["seconds"] += time.perf_counter() - start
        return self.tables[split][index]

    def flush(self, source: ReferenceSource) -> None:
        """Write the splits with new rows (collective: every process calls it; the processes'
        rows are merged first, global rank 0 writes).

        Args:
            source: the reference side (its processes and device).
        """
        procs = source.processes
        for split in sorted(self.tables):
            dirty = split in self.dirty
            if procs.world_size > 1:
                if not procs.reduce_boolean_decision(dirty, all=False):
                    continue
                self._merge(procs, source.device, split)
            elif not dirty:
                continue
            st = self.stats[split]
            st["filled"] = int(self.filled[split].sum())
            if procs.is_global_zero:
                _save(
                    Path(st["path"]),
                    {
                        "format": CACHE_FORMAT,
                        "key": st["key"],
                        "scores": self.tables[split],
                        "filled": self.filled[split],
                        "digests": self.digests.get(split),
                        "n_examples": st["n_examples"],
                    },
                )
            self.dirty.discard(split)

    def _merge(self, procs: Processes, device: torch.device | str, split: str) -> None:
        """Take every row any process has scored (the lowest rank's where several have)."""
        table, filled = self.tables[split], self.filled[split]
        digests = self.digests.setdefault(split, torch.zeros(len(table), dtype=torch.long))
        g_table = procs.all_gather(table.to(device)).cpu()  # (world, n, M)
        g_filled = procs.all_gather(filled.long().to(device)).cpu().bool()  # (world, n)
        g_digests = procs.all_gather(digests.to(device)).cpu()  # (world, n)
        merged = torch.zeros_like(filled)
        for r in range(g_table.shape[0]):
            take = g_filled[r] & ~merged
            table[take], digests[take] = g_table[r][take], g_digests[r][take]
            merged |= take
        filled |= merged

    @staticmethod
    def path_for(root: str | Path, split: str, key: str) -> Path:
        return Path(root) / f"{split}-{key[:20]}.pt"

    @classmethod
    def open(
        cls,
        source: ReferenceSource,
        datamodule: Any,
        root: str | Path,
        splits: Sequence[str] = SPLITS,
    ) -> ReferenceCache:
        """Load what the files hold for the data module's ``splits`` (or start empty tables);
        nothing is scored here (see :meth:`scores_for`). ``source``: the reference side (its
        identity)."""
        if datamodule is None:
            raise RuntimeError(
                "`reference: cached` needs the RecDataModule (trainer.datamodule is None)"
            )
        identity = source.identity()
        cache = cls({}, {}, {}, {})
        for split in splits:
            dataset = datamodule.datasets.get(split)
            if dataset is None:
                continue
            key = cache_key(identity, data_identity(datamodule, split), dataset)
            path = cls.path_for(root, split, key)
            n, m = (
                len(dataset),
                max((dataset.n_candidates(i) for i in range(len(dataset))), default=0),
            )
            blob = _load(path, key, n)
            if blob is None or blob["scores"].shape[1] != m:
                blob = {
                    "scores": torch.full((n, m), float("nan")),
                    "filled": torch.zeros(n, dtype=torch.bool),
                    "digests": torch.zeros(n, dtype=torch.long),
                    "hit": False,
                }
            cache.tables[split], cache.filled[split] = blob["scores"], blob["filled"]
            cache.digests[split] = blob["digests"]
            filled = int(blob["filled"].sum())
            cache.stats[split] = {
                "hit": blob.get("hit", True),
                "seconds": 0.0,
                "n_examples": n,
                "path": str(path),
                "key": key,
                "scored": 0,
                "filled": filled,
            }
            log.info(
                "reference cache for %s: %d of %d rows already scored (%s); the rest are scored on first use",
                split,
                filled,
                n,
                path,
            )
        return cache

    @classmethod
    def build(
        cls,
        source: ReferenceSource,
        datamodule: Any,
        root: str | Path,
        batch_size: int | None = None,
        splits: Sequence[str] = SPLITS,
    ) -> ReferenceCache:
        """Load complete tables, or compute every row and save, for the data module's ``splits``
        (the ``full`` build). Every process must call this (it is collective under multi-process
        training). ``source``: the reference side."""
        if datamodule is None:
            raise RuntimeError(
                "`reference: cached` needs the RecDataModule (trainer.datamodule is None)"
            )
        root = Path(root)
        src = source
        procs = src.processes
        identity = src.identity()
        bs = (
            batch_size or datamodule.hparams.get("eval_batch_size") or datamodule.hparams.batch_size
        )
        cache = cls({}, {}, {}, {})
        with contextlib.ExitStack() as stack:
            score: Score | None = None  # the scoring session, entered once, on the first miss
            for split in splits:
                dataset = datamodule.datasets.get(split)
                if dataset is None:
                    continue
                key = cache_key(identity, data_identity(datamodule, split), dataset)
                path = cls.path_for(root, split, key)
                blob = _load(path, key, len(dataset))
                hit = blob is not None and bool(blob["filled"].all())
                if procs.world_size > 1:
                    hit = procs.reduce_boolean_decision(hit, all=True)
                stat = {
                    "hit": hit,
                    "seconds": 0.0,
                    "n_examples": len(dataset),
                    "path": str(path),
                    "key": key,
                    "scored": 0,
                    "filled": len(dataset),
                }
                if hit:
                    log.info("reference cache hit for %s: %s", split, path)
                    cache.tables[split], cache.digests[split] = blob["scores"], blob["digests"]
                    cache.filled[split], cache.stats[split] = blob["filled"], stat
                    continue
                if score is None:
                    score = stack.enter_context(src.scoring())
                start = time.perf_counter()
                pad = datamodule.tokenizer.pad_token_id
                scores = score_dataset(src, dataset, bs, pad, score=score)
                digests = row_digests(dataset)
                stat.update(seconds=time.perf_counter() - start, scored=len(dataset))
                log.info(
                    "reference cache built for %s (%d examples) in %.1fs: %s",
                    split,
                    len(dataset),
                    stat["seconds"],
                    path,
                )
                filled = torch.ones(len(dataset), dtype=torch.bool)
                if procs.is_global_zero:
                    _save(
                        path,
                        {
                            "format": CACHE_FORMAT,
                            "key": key,
                            "scores": scores,
                            "filled": filled,
                            "digests": digests,
                            "n_examples": len(dataset),
                        },
                    )
                cache.tables[split], cache.digests[split], cache.filled[split] = (
                    scores,
                    digests,
                    filled,
                )
                cache.stats[split] = stat
        if procs.world_size > 1:
            procs.barrier("reference_cache")
        return cache


def build_mode(mode: str, at_hand: bool) -> str:
    """``lazy`` or ``full`` for ``model.scoring.reference_cache_build`` (``auto``: lazy when the
    reference is at hand every step — LoRA with the adapter off, or a frozen copy —, else full).

    Args:
        mode: the setting, ``auto`` | ``lazy`` | ``full``.
        at_hand: whether the reference can score at every step.

    Raises:
        ValueError: ``lazy`` where the reference is not at hand.
    """
    if mode == "auto":
        return "lazy" if at_hand else "full"
    if mode == "lazy" and not at_hand:
        raise ValueError(
            "model.scoring.reference_cache_build: lazy needs the reference at every step, but full "
            "fine-tuning with "
            "`reference: cached` keeps no frozen copy (its initial weights are gone after step one); "
            "use reference_cache_build: full (or auto), or model.scoring.reference: live"
        )
    return mode


def _rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The batch restricted to the given row positions (tensors and per-row lists)."""
    b = len(batch["index"])
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() and v.shape[0] == b:
            out[k] = v[rows.to(v.device)]
        elif isinstance(v, list) and len(v) == b:
            out[k] = [v[i] for i in rows.tolist()]
        else:
            out[k] = v
    return out


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


def _load(path: Path, key: str, n_examples: int) -> dict[str, Any] | None:
    """A cache file's ``scores``, ``filled`` and ``digests`` if it is readable and has ``key``."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: rebuild it
        log.warning("ignoring unreadable reference cache %s: %s", path, err)
        return None
    if not isinstance(blob, dict) or blob.get("key") != key:
        return None
    scores, filled, digests = blob.get("scores"), blob.get("filled"), blob.get("digests")
    if not all(torch.is_tensor(t) and t.shape[0] == n_examples for t in (scores, filled)):
        return None
    if not torch.is_tensor(digests):
        digests = torch.zeros(n_examples, dtype=torch.long)
    return {
        "scores": scores.float(),
        "filled": filled.bool(),
        "digests": digests.long(),
        "hit": True,
    }


def _save(path: Path, blob: dict[str, Any]) -> None:
    """Write atomically (temporary file + rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def score_dataset(
    source: ReferenceSource,
    dataset: Any,
    batch_size: int,
    pad_token_id: int,
    model: torch.nn.Module | None = None,
    scorer: Callable[[dict[str, Any], torch.nn.Module], torch.Tensor] | None = None,
    *,
    score: Score | None = None,
) -> torch.Tensor:
    """Score every candidate of every example with the reference → (n_examples, M).

    Each process scores the examples ``rank::world``, longest prompts first in batches of
    similar length; the padding slots of the table hold ``-inf``.

    Args:
        source: the reference side (its processes and device).
        dataset: the split's dataset.
        batch_size: examples per forward.
        pad_token_id: the collate's padding id.
        model: with ``scorer``, an entered ``SDPOModule.reference_scorer()`` pair:
            ``scorer(batch, model)`` scores, with ``model`` in eval mode.
        scorer: see ``model``.
        score: an entered scoring session (``source.scoring()``); by default one is opened here.
    """
    src = source
    if score is None:
        session = _pair_session(model, scorer) if scorer is not None else src.scoring()
        with session as opened:
            return score_dataset(src, dataset, batch_size, pad_token_id, score=opened)
    world, rank = src.processes.world_size, src.processes.global_rank
    n = len(dataset)
    if n == 0:
        return torch.empty(0, 0)
    lengths = {i: len(dataset.encoded[i].prompt_ids) for i in range(rank, n, world)}
    mine = sorted(lengths, key=lambda i: (-lengths[i], i))
    per_rank = -(-n // world)  # ceil: the largest share
    steps = -(-per_rank // batch_size)  # the same number of forwards on every rank
    collate = make_collate(pad_token_id)
    m = max(dataset.n_candidates(i) for i in range(n))
    out = torch.full((n, m), float("-inf"))
    for s in range(steps):
        # a rank with no rows left scores a dummy row: every rank runs the same forwards
        idx = mine[s * batch_size : (s + 1) * batch_size] or mine[:1] or [0]
        batch = collate([dataset[i] for i in idx])
        batch = {k: v.to(src.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logps = score(batch).float()  # (b, M_batch)
        logps = logps.masked_fill(~batch["candidate_mask"], float("-inf")).cpu()
        out[torch.tensor(idx), : logps.shape[1]] = logps
    if world > 1:
        gathered = src.processes.all_gather(out.to(src.device)).cpu()  # (world, n, m)
        for r in range(world):
            rows = torch.arange(r, n, world)
            out[rows] = gathered[r][rows]
    return out


@contextlib.contextmanager
def _pair_session(
    model: torch.nn.Module | None,
    scorer: Callable[[dict[str, Any], torch.nn.Module], torch.Tensor],
) -> Iterator[Score]:
    """A scoring session of a ``(model, scorer)`` pair: ``model`` in eval mode."""
    with eval_mode(model):
        yield lambda batch: scorer(batch, model)
