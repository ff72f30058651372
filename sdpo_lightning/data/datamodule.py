"""``RecDataModule``: candidate-list files → tokenized batches of every candidate.

The data module knows nothing of the model: the tokenizer (and the item table of hybrid
prompts) is handed to it by :meth:`RecDataModule.connect`, and the negatives of each batch are
picked by the LightningModule (:mod:`sdpo_lightning.training.negatives`) with the settings the
data module carries (:attr:`RecDataModule.sampling`)."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader, DistributedSampler

from sdpo_lightning.data.catalogue_training import VAL_DRAW_EPOCH, CatalogueDataset
from sdpo_lightning.data.collate import RecDataset, make_collate
from sdpo_lightning.data.compact import load_compact
from sdpo_lightning.data.negatives import STRATEGIES, NegativeSampling
from sdpo_lightning.data.prompts import EncodedExample, PromptBuilder
from sdpo_lightning.data.records import Example
from sdpo_lightning.errors import ConfigError

log = logging.getLogger(__name__)


def _encode(
    prompts: PromptBuilder,
    tokenizer: Any,
    max_length: int,
    title_ids: dict[str, list[int]],
    source: str,
    items: Any,
    example: Example,
    index: int,
) -> EncodedExample:
    """``PromptBuilder.encode`` with the split's settings bound (picklable for data workers)."""
    return prompts.encode(
        example, index, tokenizer, max_length, title_ids, source=source, items=items
    )


def _check_counts(**counts: int | None) -> None:
    """Refuse a count setting (``batch_size``, ``max_length``, ...) that is not a positive
    integer; ``None`` stands for the default."""
    for name, value in counts.items():
        integer = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not (integer and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class RecDataModule(pl.LightningDataModule):
    """Reads candidate-list files, builds prompts, tokenizes and batches every candidate.

    Splits are held compactly and tokenized lazily (on ``dataset[i]``), so ``setup`` costs
    one streaming read of each file and the first step comes at once even for 77k rows.

    The tokenizer, and the item table of hybrid prompts (see
    :mod:`sdpo_lightning.modeling.hybrid`), come in through :meth:`connect`, before ``setup``:
    the ``sdpo`` command connects the model's; a script calls
    ``dm.connect(module.tokenizer, module.item_table)`` before handing both to a Trainer.

    Batches hold all candidates; the negative-sampling settings below are carried as
    :attr:`sampling` for the LightningModule, which picks each batch's K negatives.

    Args:
        train_file: training candidate-list file (``.json`` or ``.jsonl``).
        val_file: validation file (fixed negatives; validation loss and HR@1).
        test_file: test file (generation and ranking evaluation).
        predict_file: file for ``predict``.
        prompt_templates: preset (``movies``, ``music``, ``books``), a template, or a list.
        num_negatives: K, negatives per example for DPO / S-DPO (every example needs K + 1
            candidates).
        negative_sampling: ``random`` | ``popularity`` | ``hard`` | ``tempered`` |
            ``on_policy`` | ``on_policy_beam`` (``train_protocol: all_item`` only) (training;
            validation negatives are random, drawn once; see ``docs/negatives.md``).
        temperature: temperature of ``tempered`` sampling.
        on_policy_refresh_steps: ``on_policy`` / ``on_policy_beam``: a row's policy scores
            (beams) are reused until they are this many optimizer steps old (1: every batch,
            the current policy).
        on_policy_beam_width: ``on_policy_beam``: live beams per row (``None``: K + 1; the
            catalogue size makes the search exact).
        batch_size: training batch size (examples).
        eval_batch_size: validation / test batch size (default: ``batch_size``).
        max_length: token budget of prompt + longest completion (oldest history dropped).
        num_workers: data loader workers.
        seed: seeds template choice and negatives.
        lenient: skip (and count) bad records instead of failing.
        separator: joins titles in the prompt.
        completion_prefix: text before the title in the completion (``auto``: ``""`` for
            SentencePiece tokenizers, ``" "`` for byte-level BPE).
        limit_val_examples: use only the first N validation examples (``None``: all).
        train_protocol: ``candidate_list`` (the rows' own candidate lists, shown in the prompt)
            or ``all_item``: history-only prompts (the preset's ``HISTORY_PRESETS`` templates)
            and, for training and validation rows, candidates = the target + ``catalogue_candidates``
            items of ``catalogue_file`` drawn per (seed, epoch, row), never the target or the
            history (validation: one fixed draw); see ``docs/negatives.md``.
        catalogue_file: ``catalogue.json`` of ``train_protocol: all_item``.
        catalogue_candidates: M, catalogue items drawn per row (>= ``num_negatives``); the
            negative selector picks the K negatives among them.
        catalogue_sampling: ``uniform`` or ``popularity`` (weighted by training popularity + 1).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        prompt_templates: str | list[str] = "movies",
        num_negatives: int = 3,
        negative_sampling: str = "random",
        temperature: float = 1.0,
        on_policy_refresh_steps: int = 1,
        on_policy_beam_width: int | None = None,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        max_length: int = 512,
        num_workers: int = 0,
        seed: int = 0,
        lenient: bool = False,
        separator: str = ", ",
        completion_prefix: str = "auto",
        limit_val_examples: int | None = None,
        train_protocol: Literal["candidate_list", "all_item"] = "candidate_list",
        catalogue_file: str | None = None,
        catalogue_candidates: int = 19,
        catalogue_sampling: Literal["uniform", "popularity"] = "uniform",
    ) -> None:
        super().__init__()
        if train_protocol not in ("candidate_list", "all_item"):
            raise ValueError(
                f"train_protocol must be candidate_list or all_item, got {train_protocol!r}"
            )
        if catalogue_sampling not in ("uniform", "popularity"):
            raise ValueError(
                f"catalogue_sampling must be uniform or popularity, got {catalogue_sampling!r}"
            )
        if train_protocol == "all_item" and not catalogue_file:
            raise ConfigError(
                "data.train_protocol all_item draws completions from the catalogue: "
                "set data.catalogue_file (catalogue.json of sdpo-prepare)"
            )
        _check_counts(catalogue_candidates=catalogue_candidates)
        if negative_sampling == "on_policy_beam" and train_protocol != "all_item":
            raise ConfigError(
                "data.negative_sampling on_policy_beam searches the catalogue: set "
                "data.train_protocol all_item and data.catalogue_file"
            )
        _check_counts(on_policy_beam_width=on_policy_beam_width)
        if train_protocol == "all_item" and catalogue_candidates < num_negatives:
            raise ValueError(
                f"catalogue_candidates ({catalogue_candidates}) must be >= num_negatives "
                f"({num_negatives}): the negatives are picked among the drawn items"
            )
        if negative_sampling not in STRATEGIES:
            raise ValueError(
                f"negative_sampling must be one of {STRATEGIES}, got {negative_sampling!r}"
            )
        _check_counts(
            num_negatives=num_negatives,
            batch_size=batch_size,
            max_length=max_length,
            eval_batch_size=eval_batch_size,
            on_policy_refresh_steps=on_policy_refresh_steps,
        )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.files = {
            "fit": train_file,
            "validate": val_file,
            "test": test_file,
            "predict": predict_file,
        }
        self.prompts = PromptBuilder(prompt_templates, seed, separator, completion_prefix)
        # all_item training: history-only prompts of the same domain (fit / validate rows)
        self.train_prompts = (
            PromptBuilder(prompt_templates, seed, separator, completion_prefix, history_only=True)
            if train_protocol == "all_item"
            else self.prompts
        )
        self.catalogue: Any = None  # all_item training: the Catalogue (see load_split)
        self.tokenizer: Any = None  # see connect()
        self.item_table: Any = None  # hybrid prompts: an ItemTable (see connect())
        self.datasets: dict[str, RecDataset] = {}
        self._title_ids: dict[str, list[int]] = {}
        self.popularity: Counter = Counter()  # target counts of the training split

    # ---------------------------------------------------------------- collaborators
    def connect(self, tokenizer: Any, item_table: Any = None) -> None:
        """Hand in what prompts are encoded with: call before ``setup``.

        Args:
            tokenizer: the model's tokenizer (a ``transformers`` tokenizer).
            item_table: the :class:`~sdpo_lightning.modeling.hybrid.ItemTable` of hybrid
                prompts (each title followed by its item token), or ``None`` for text prompts.
        """
        self.tokenizer = tokenizer
        self.item_table = item_table

    @property
    def sampling(self) -> NegativeSampling:
        """The negative-sampling settings (``num_negatives``, ``negative_sampling``,
        ``temperature``, ``seed``, ``on_policy_refresh_steps``) for whoever picks the negatives."""
        hp = self.hparams
        return NegativeSampling(
            hp.negative_sampling,
            hp.num_negatives,
            hp.seed,
            hp.temperature,
            hp.get("on_policy_refresh_steps", 1),
            hp.get("on_policy_beam_width"),
        )

    # ---------------------------------------------------------------- loading
    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError(
                "RecDataModule has no tokenizer: call dm.connect(tokenizer, item_table) "
                "before setup (the sdpo command connects the model's)"
            )
        return self.tokenizer

    def load_split(self, split: str, path: str, min_candidates: int) -> RecDataset:
        """Read and validate one file into a dataset that tokenizes lazily.

        Records are kept compact (titles interned, rows as indices); prompts are rendered and
        tokenized when an example is first asked for, with exactly the ids the eager path gave.
        A too-long example therefore fails when first loaded (the error names file and record).
        """
        tok = self._tokenizer()
        self.prompts.resolve_prefix(tok)
        examples, skipped = load_compact(
            path,
            min_candidates=min_candidates,
            lenient=self.hparams.lenient,
            require_target=split != "predict",
        )
        if split == "validate" and self.hparams.limit_val_examples:
            examples = examples.head(self.hparams.limit_val_examples)
        log.info(
            "%s: %d examples (%d skipped); tokenized lazily, history truncated per example to fit max_length=%d",
            path,
            len(examples),
            len(skipped),
            self.hparams.max_length,
        )
        if split == "fit":
            self.popularity = examples.target_counts()
        hp = self.hparams
        if hp.get("train_protocol", "candidate_list") == "all_item" and split in (
            "fit",
            "validate",
        ):
            return self._catalogue_split(split, path, examples)
        encode = functools.partial(
            _encode,
            self.prompts,
            tok,
            self.hparams.max_length,
            self._title_ids,
            str(path),
            self.item_table,
        )
        return RecDataset(examples, encode, popularity=self.popularity if split == "fit" else None)

    def _catalogue_split(self, split: str, path: str, examples: Any) -> CatalogueDataset:
        """``train_protocol: all_item``: rows with history-only prompts and catalogue draws."""
        from sdpo_lightning.data.catalogue import load_catalogue

        hp = self.hparams
        if self.item_table is not None:
            raise ConfigError(
                "data.train_protocol all_item does not support hybrid item prompts (model.hybrid)"
            )
        self.prompts.resolve_prefix(self._tokenizer())
        self.train_prompts.completion_prefix = self.prompts.completion_prefix
        if self.catalogue is None:
            self.catalogue = load_catalogue(hp.catalogue_file)
        self.catalogue.check_targets((ex.target for ex in examples), str(path))
        encode = functools.partial(
            _encode,
            self.train_prompts,
            self._tokenizer(),
            hp.max_length,
            self._title_ids,
            str(path),
            None,
        )
        return CatalogueDataset(
            examples,
            encode,
            self.catalogue,
            hp.catalogue_candidates,
            hp.seed,
            hp.catalogue_sampling,
            default_epoch=0 if split == "fit" else VAL_DRAW_EPOCH,
            popularity=self.popularity if split == "fit" else None,
        )

    def setup(self, stage: str | None = None) -> None:
        k1 = self.hparams.num_negatives + 1
        if self.hparams.get("train_protocol", "candidate_list") == "all_item":
            k1 = (
                1  # the rows' own candidate lists are not read: completions come from the catalogue
            )
        needed = {
            "fit": [("fit", k1), ("validate", k1)],
            "validate": [("validate", k1)],
            "test": [("test", 1)],
            "predict": [("predict", 1)],
        }[stage or "fit"]
        for split, min_c in needed:
            path = self.files[split]
            if path is None:
                if split in ("validate",) and stage == "fit":
                    continue
                command = getattr(stage, "value", stage) or "fit"
                raise ConfigError(
                    f"no {split} file configured (data.{self._arg(split)}); `{command}` reads it"
                )
            if split not in self.datasets:
                self.datasets[split] = self.load_split(split, path, min_c)

    @staticmethod
    def _arg(split: str) -> str:
        return {
            "fit": "train_file",
            "validate": "val_file",
            "test": "test_file",
            "predict": "predict_file",
        }[split]

    # ---------------------------------------------------------------- loaders
    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        sampler = None
        if shuffle:
            # one seeded order for any number of processes, identical after a resume: the
            # permutation is randperm(n, seed + epoch) (Lightning calls set_epoch each epoch)
            # and process r takes every world-th item of it
            t = self.trainer
            world, rank = (t.world_size, t.global_rank) if t is not None else (1, 0)
            sampler = ResumableSampler(
                self.datasets[split],
                num_replicas=world,
                rank=rank,
                shuffle=True,
                seed=self.hparams.seed,
            )
            sampler.resume_at = self._resume_at
            # catalogue rows are re-drawn each epoch: the sampler hands the dataset (index, epoch)
            sampler.with_epoch = isinstance(self.datasets[split], CatalogueDataset)
            shuffle = False
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=make_collate(self._tokenizer().pad_token_id),
            persistent_workers=self.hparams.num_workers > 0,
        )

    # ---------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """Where the training epoch stands (saved in every checkpoint): the epoch and the
        batches of it already trained, so that a mid-epoch resume continues the epoch's
        seeded order after them instead of restarting it (Lightning's loop counts the
        batches as done, but a plain loader would replay the epoch from its first batch)."""
        t = self.trainer
        if t is None or t.state.fn != "fit":
            return {}
        done = t.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "epoch": t.current_epoch,
            "batches_done": done,
            "batch_size": self.hparams.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state.get("batch_size") == self.hparams.batch_size:
            self._resume_at.update(
                epoch=state["epoch"], samples=state["batches_done"] * state["batch_size"]
            )

    @functools.cached_property
    def _resume_at(self) -> dict[str, int]:
        """``{"epoch", "samples"}`` to skip on the first pass of that epoch after a resume."""
        return {}

    @property
    def _eval_bs(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def train_dataloader(self) -> DataLoader:
        return self._loader("fit", True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if "validate" not in self.datasets:
            return []
        return self._loader("validate", False, self._eval_bs)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self._eval_bs)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False, self._eval_bs)

    # ---------------------------------------------------------------- inspection
    def collated(self, split: str, indices: Sequence[int]) -> dict[str, Any]:
        """The batch of a split's examples ``indices``, as the loaders collate it (every
        candidate; for inspection and tests)."""
        return make_collate(self._tokenizer().pad_token_id)(
            [self.datasets[split][i] for i in indices]
        )


class ResumableSampler(DistributedSampler):
    """:class:`DistributedSampler` that, once, skips the samples of its epoch that a resumed
    run has already trained on (``resume_at``, filled by :meth:`RecDataModule.load_state_dict`).
    The order is the same seeded permutation, so the resumed run sees the uninterrupted
    run's remaining batches. ``len()`` stays the full epoch's: Lightning's loop counts the
    restored batches as done and ends the epoch at the same batch count."""

    resume_at: dict[str, int]

    def __iter__(self):
        indices = list(super().__iter__())
        at = getattr(self, "resume_at", None)
        if at and at.get("epoch") == self.epoch:
            indices = indices[at["samples"] :]
            at.clear()  # only the first pass after the resume
        if getattr(self, "with_epoch", False):  # CatalogueDataset: draws of this epoch
            return iter([(i, self.epoch) for i in indices])
        return iter(indices)
