"""Item-id data for the sequential recommenders (GRU4Rec, Caser, SASRec).

Items get integer ids from their titles: ``0`` is padding, ``1`` is "unknown" (a title
never seen in the fitted training rows), the fitted rows' titles (histories, targets and
candidates, sorted — the catalogue, as the paper's id models have) get ``2..``. Every training row gives one ``history → target`` pair (the last
``max_len`` history items, left-padded with 0): a sliding-window file thus counts each
interaction once as a target. Candidate lists of training rows are not used.

A by-user selection split (:func:`~.selection.carve_selection_split`) is held out of the
training file for validation (checkpoint selection); the test file is only scored. At
test time every candidate is scored by the model's logit for its id. Items that are
candidates but never targets, and the shared unknown id 1, take part in the full softmax
as never-chosen classes, so training pushes their logits down; unknown candidates tie
with each other (ties count against the target).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from sdpo_lightning.baselines.selection import carve_selection_split
from sdpo_lightning.data.readers import load_examples
from sdpo_lightning.data.records import Example

__all__ = ["ItemVocab", "SeqRecDataModule", "SeqRecDataset"]

PAD, UNK = 0, 1


class ItemVocab:
    """Title ↔ id map built from training rows' titles (0 = padding, 1 = unknown)."""

    def __init__(self, examples: Sequence[Example]) -> None:
        titles = sorted({t for ex in examples for t in (*ex.history, ex.target, *ex.candidates)})
        self.ids = {t: i + 2 for i, t in enumerate(titles)}

    def __len__(self) -> int:
        return len(self.ids) + 2

    def encode(self, titles: Sequence[str]) -> list[int]:
        """Ids of ``titles`` (unknown titles → 1)."""
        return [self.ids.get(t, UNK) for t in titles]


class SeqRecDataset(Dataset):
    """Tensors of examples: ``seq`` (L,), ``target`` (), ``candidates`` (M,), ``target_index``, ``index``."""

    def __init__(self, examples: Sequence[Example], vocab: ItemVocab, max_len: int) -> None:
        self.examples = list(examples)
        self.vocab, self.max_len = vocab, max_len

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ex = self.examples[i]
        hist = self.vocab.encode(ex.history[-self.max_len :])
        seq = [PAD] * (self.max_len - len(hist)) + hist  # left-padded, newest last
        return {
            "seq": torch.tensor(seq, dtype=torch.long),
            "target": torch.tensor(self.vocab.encode([ex.target])[0], dtype=torch.long),
            "candidates": torch.tensor(self.vocab.encode(ex.candidates), dtype=torch.long),
            "target_index": torch.tensor(ex.target_index, dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
        }


class SeqRecDataModule(pl.LightningDataModule):
    """Training file → (fit, selection) item-id datasets; test file → scoring dataset.

    Args:
        train_file: candidate-list training file (read with the project's reader).
        test_file: file whose rows are ranked and reported.
        dataset: the report's dataset name (default: the test file's folder name).
        max_len: history items kept (the newest).
        batch_size: training batch size.
        selection_fraction: share of training users held out for validation.
        split_seed: seed of the selection split.
        lenient: skip (and count) bad records instead of failing.
        protocol: ``candidates`` (rank each test row's candidate list) or ``all_item`` (rank the
            whole catalogue, history items excluded: :mod:`.all_item`).
        catalogue_file: ``catalogue.json`` of the ``all_item`` protocol.
        top_n: items returned per row in ``all_item``.
    """

    def __init__(
        self,
        train_file: str,
        test_file: str,
        dataset: str | None = None,
        max_len: int = 10,
        batch_size: int = 128,
        selection_fraction: float = 0.2,
        split_seed: int = 0,
        lenient: bool = False,
        protocol: str = "candidates",
        catalogue_file: str | None = None,
        top_n: int = 20,
    ) -> None:
        super().__init__()
        self.train_file, self.test_file = train_file, test_file
        self.dataset = dataset or Path(test_file).resolve().parent.name
        self.max_len, self.batch_size = max_len, batch_size
        train = load_examples(train_file, lenient=lenient).examples
        self.test_examples = load_examples(test_file, lenient=lenient).examples
        self.fit_examples, self.sel_examples = carve_selection_split(
            train, selection_fraction, split_seed
        )
        self.vocab = ItemVocab(self.fit_examples)
        if protocol not in ("candidates", "all_item"):
            raise ValueError(f"data.protocol must be 'candidates' or 'all_item', got {protocol!r}")
        self.protocol, self.top_n, self.catalogue = protocol, top_n, None
        if protocol == "all_item":
            from sdpo_lightning.baselines.all_item import check_targets
            from sdpo_lightning.data.catalogue import load_catalogue

            if catalogue_file is None:
                raise ValueError("data.protocol all_item needs data.catalogue_file")
            self.catalogue = load_catalogue(catalogue_file)
            if not 1 <= top_n <= len(self.catalogue):
                raise ValueError(f"data.top_n must be in [1, {len(self.catalogue)}], got {top_n}")
            check_targets(self.test_examples, self.catalogue, test_file)

    @property
    def catalogue_ids(self) -> torch.Tensor:
        """Vocabulary id of every catalogue item, catalogue order (1, unknown, for unseen titles)."""
        return torch.tensor(self.vocab.encode(self.catalogue.titles), dtype=torch.long)

    @property
    def num_items(self) -> int:
        """Vocabulary size including padding and unknown."""
        return len(self.vocab)

    def _loader(self, examples: Sequence[Example], shuffle: bool) -> DataLoader:
        ds = SeqRecDataset(examples, self.vocab, self.max_len)
        return DataLoader(ds, batch_size=self.batch_size if shuffle else 512, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.fit_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.sel_examples, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_examples, shuffle=False)
