"""The supported datasets and the one-call :func:`prepare` pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpo_lightning.data.prepare.goodreads import read_goodreads
from sdpo_lightning.data.prepare.lastfm import read_lastfm
from sdpo_lightning.data.prepare.movielens import read_movielens_1m, read_movielens_100k
from sdpo_lightning.data.prepare.output import write_prepared
from sdpo_lightning.data.prepare.protocol import ProtocolConfig, RawDataset, build_examples
from sdpo_lightning.data.prepare.rawio import PrepareError, ReaderOptions

__all__ = ["DatasetSpec", "DATASETS", "get_dataset", "prepare"]


@dataclass(frozen=True)
class DatasetSpec:
    """A supported raw dataset.

    Attributes:
        name: Canonical name used on the command line.
        label: Display name.
        aliases: Other accepted names.
        files: The raw files the reader expects (for help and errors).
        reader: ``reader(raw folder, options) -> RawDataset``.
    """

    name: str
    label: str
    aliases: tuple[str, ...]
    files: str
    reader: Callable[[Path | None, ReaderOptions], RawDataset]


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "movielens-100k",
            "MovieLens-100K",
            ("ml-100k", "ml100k", "movielens100k"),
            "u.data, u.item (latin-1)",
            read_movielens_100k,
        ),
        DatasetSpec(
            "movielens-1m",
            "MovieLens-1M",
            ("ml-1m", "ml1m", "movielens1m"),
            "ratings.dat, movies.dat (latin-1)",
            read_movielens_1m,
        ),
        DatasetSpec(
            "lastfm",
            "Last.fm HetRec 2011",
            ("lastfm-hetrec", "hetrec-lastfm", "lastfm-2k"),
            "user_artists.dat, artists.dat, user_taggedartists-timestamps.dat",
            read_lastfm,
        ),
        DatasetSpec(
            "goodreads",
            "Goodreads (UCSD)",
            ("goodreads-ucsd",),
            "goodreads_interactions_<genre>.json.gz, goodreads_books_<genre>.json.gz",
            read_goodreads,
        ),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    """Resolve a dataset name or alias (case-insensitive).

    Raises:
        PrepareError: Unknown name; the message lists the choices.
    """
    key = name.strip().lower().replace("_", "-")
    for spec in DATASETS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise PrepareError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def prepare(
    dataset: str,
    raw: Path | None,
    out: Path,
    config: ProtocolConfig | None = None,
    options: ReaderOptions | None = None,
) -> dict[str, Any]:
    """Read a raw dataset, apply the protocol and write the splits and ``stats.json``.

    Args:
        dataset: Dataset name or alias (see :data:`DATASETS`).
        raw: Folder holding the raw files.
        out: Output folder.
        config: Protocol options (defaults: 10 history items, 20 candidates, 8:1:1, seed 42).
        options: Reader options (lenient mode, encoding, Goodreads file selection).

    Returns:
        The statistics written to ``stats.json``.
    """
    spec = get_dataset(dataset)
    config = config or ProtocolConfig()
    config.validate()
    raw_data = spec.reader(Path(raw) if raw is not None else None, options or ReaderOptions())
    if not raw_data.interactions:
        source = f" from {raw}" if raw is not None else ""
        raise PrepareError(f"{spec.name}: no interactions read{source}")
    prepared = build_examples(raw_data, config)
    write_prepared(prepared, Path(out))
    return prepared.stats
