"""Writing prepared splits and statistics, and the console summary table.

Output folder layout::

    DIR/train.json  DIR/valid.json  DIR/test.json   candidate-list JSON (one list each)
    DIR/catalogue.json                               every item: item_id, title, popularity
    DIR/stats.json                                   statistics and the protocol used

Each split file is one JSON list of objects with the keys, in this order,
``historyList`` (titles oldest → newest), ``itemList`` (candidate titles, target
included, seeded order), ``trueSelection`` (the target title), ``user_id`` and, unless
disabled, ``item_ids`` (the same three fields as raw item ids). Written as UTF-8 with
``ensure_ascii=False``; files are replaced atomically and are byte-identical across runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sdpo_lightning.data.prepare.protocol import SPLITS, PreparedDataset
from sdpo_lightning.data.prepare.rawio import PrepareError

__all__ = ["write_prepared", "format_stats"]


def _write_atomic(path: Path, text_chunks: Iterable[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for chunk in text_chunks:
            handle.write(chunk)
    os.replace(tmp, path)


def _encode_rows(rows: list[dict[str, Any]]) -> Iterator[str]:
    """Yield exactly ``json.dumps(rows, ensure_ascii=False) + "\\n"``, one row at a time."""
    yield "["
    for i, row in enumerate(rows):
        yield (", " if i else "") + json.dumps(row, ensure_ascii=False)
    yield "]\n"


def write_prepared(prepared: PreparedDataset, out_dir: Path) -> dict[str, Path]:
    """Write the three split files and ``stats.json``.

    Args:
        prepared: Output of :func:`~sdpo_lightning.data.prepare.protocol.build_examples`.
        out_dir: Destination folder (created if missing).

    Returns:
        ``{"train": path, "valid": path, "test": path, "catalogue": path, "stats": path}``
        (no catalogue when ``prepared`` has none).
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrepareError(f"cannot create output folder {out_dir}: {err.strerror}") from None
    if not out_dir.is_dir():
        raise PrepareError(f"output path is not a folder: {out_dir}")
    paths: dict[str, Path] = {}
    for split in SPLITS:
        paths[split] = out_dir / f"{split}.json"
        _write_atomic(paths[split], _encode_rows(prepared.splits[split]))
    if prepared.catalogue:
        from sdpo_lightning.data.catalogue import Catalogue, write_catalogue

        items = prepared.catalogue
        catalogue = Catalogue(
            [r["title"] for r in items],
            [r["item_id"] for r in items],
            [r["popularity"] for r in items],
            source=str(out_dir / "catalogue.json"),
        )
        paths["catalogue"] = write_catalogue(catalogue, out_dir / "catalogue.json")
    paths["stats"] = out_dir / "stats.json"
    stats_text = json.dumps(prepared.stats, ensure_ascii=False, indent=2) + "\n"
    _write_atomic(paths["stats"], [stats_text])
    return paths


def format_stats(stats: dict[str, Any]) -> str:
    """Render the statistics as a plain-text table for the console."""
    lines = [
        f"dataset        {stats['dataset']}",
        f"users          {stats['users']}",
        f"items          {stats['items']}",
        f"interactions   {stats['interactions']}  (raw {stats['raw_interactions']})",
        "",
        f"{'split':<8}{'users':>8}{'examples':>11}{'mean history':>15}",
    ]
    for split in (*SPLITS, "total"):
        users = stats["users"] if split == "total" else stats["users_per_split"][split]
        key = "all" if split == "total" else split
        lines.append(
            f"{split:<8}{users:>8}{stats['examples'][split]:>11}"
            f"{stats['mean_history_length'][key]:>15.4f}"
        )
    extra = []
    if stats.get("disambiguated_titles"):
        extra.append(f"titles disambiguated: {stats['disambiguated_titles']}")
    if stats.get("dropped"):
        extra.append("dropped: " + ", ".join(f"{k}={v}" for k, v in stats["dropped"].items()))
    if stats.get("skipped_lines"):
        total = sum(stats["skipped_lines"].values())
        extra.append(
            f"malformed lines skipped (--lenient): {total} ("
            + ", ".join(f"{k}: {v}" for k, v in stats["skipped_lines"].items())
            + ")"
        )
    return "\n".join(lines + ([""] + extra if extra else []))
