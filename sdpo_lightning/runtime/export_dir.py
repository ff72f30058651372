"""Writing an export directory all at once: complete, or not there at all.

:func:`atomic_directory` hands out a temporary sibling ``.<name>.partial-<pid>``; when the
block ends without error it writes :data:`~sdpo_lightning.modeling.models.EXPORT_MARKER` (every file
and its size, written last), fsyncs the files and the directory, and renames it to its final
name. A process killed while writing leaves only the hidden partial directory, which holds
:data:`~sdpo_lightning.modeling.models.EXPORT_IN_PROGRESS` so ``--model.source.init_adapter`` refuses it (and
which the next export of the same path removes).
A previous export at the final path is replaced; any other directory found there is kept,
renamed to ``<name>.replaced-<time>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from sdpo_lightning.modeling.models import EXPORT_IN_PROGRESS, EXPORT_MARKER

log = logging.getLogger(__name__)

EXPORT_FILES = (EXPORT_MARKER, "adapter_config.json", "config.json")


def sort_adapter_modules(directory: Path) -> None:
    """Sort ``target_modules`` in ``directory/adapter_config.json`` (if it is a list).

    peft writes them from a set, so their order follows Python's per-process string hashing:
    two exports of the same run would differ, and so would the reference-cache keys that hash
    the file. Sorted, the same run gives the same bytes.
    """
    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    modules = config.get("target_modules")
    if isinstance(modules, list) and modules != sorted(modules):
        config["target_modules"] = sorted(modules)
        path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Remove partial / old siblings of ``out`` left by processes that are gone."""
    for sibling in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = sibling.name.rpartition("-")
        if kind.endswith((".partial", ".old")) and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


def _seal(tmp: Path) -> None:
    """Write the marker (last) and fsync every file and the directory."""
    (tmp / EXPORT_IN_PROGRESS).unlink()
    files = {
        p.relative_to(tmp).as_posix(): p.stat().st_size
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    (tmp / EXPORT_MARKER).write_text(
        json.dumps({"complete": True, "files": files}, indent=1), encoding="utf-8"
    )
    for p in tmp.rglob("*"):
        _fsync(p)
    _fsync(tmp)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block succeeds.

    On an exception the temporary directory is removed and ``out`` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / EXPORT_IN_PROGRESS).touch()  # refused by check_adapter_dir until sealed
    try:
        yield tmp
        _seal(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        was_export = out.is_dir() and any((out / name).is_file() for name in EXPORT_FILES)
        old = out.parent / (
            f".{out.name}.old-{os.getpid()}"
            if was_export
            else f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        if not was_export:
            log.warning("%s held something other than an export; kept as %s", out, old)
        os.replace(out, old)
    os.replace(tmp, out)
    _fsync(out.parent)
    if old is not None and old.name.startswith("."):
        shutil.rmtree(old, ignore_errors=True)
