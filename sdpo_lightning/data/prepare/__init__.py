"""Prepare raw interaction logs into S-DPO / LLaRA candidate-list splits.

The package turns MovieLens-100K/1M, HetRec Last.fm and UCSD Goodreads raw files into
``train.json`` / ``valid.json`` / ``test.json`` (the public candidate-list format) and
``stats.json``, following the protocol in :mod:`.protocol` (documented in
``docs/prepare.md``). Command line: ``sdpo-prepare`` or
``python -m sdpo_lightning.data.prepare``.

Example:
    >>> from sdpo_lightning.data.prepare import ProtocolConfig, prepare
    >>> stats = prepare("movielens-100k", "ml-100k", "out", ProtocolConfig(seed=42))
"""

from sdpo_lightning.data.prepare.download import REMOTE, default_cache_dir, download_dataset
from sdpo_lightning.data.prepare.output import format_stats, write_prepared
from sdpo_lightning.data.prepare.protocol import (
    SPLITS,
    PreparedDataset,
    ProtocolConfig,
    RawDataset,
    build_examples,
)
from sdpo_lightning.data.prepare.rawio import PrepareError, ReaderOptions
from sdpo_lightning.data.prepare.registry import DATASETS, DatasetSpec, get_dataset, prepare

__all__ = [
    "DATASETS",
    "REMOTE",
    "SPLITS",
    "DatasetSpec",
    "PrepareError",
    "PreparedDataset",
    "ProtocolConfig",
    "RawDataset",
    "ReaderOptions",
    "build_examples",
    "default_cache_dir",
    "download_dataset",
    "format_stats",
    "get_dataset",
    "prepare",
    "write_prepared",
]
