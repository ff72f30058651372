"""One run at a time per ``default_root_dir``: an advisory lock file held for a whole run.

Two runs writing checkpoints, logs and exports into one directory would interleave them. The
``sdpo`` command therefore holds ``<default_root_dir>/.sdpo.lock`` (``fcntl.flock``, exclusive)
from before the model is built until the command ends; a second run on the same directory is
refused with :class:`~sdpo_lightning.errors.RunDirInUseError` naming the holder's pid. The
kernel drops a ``flock`` when its process dies, so the lock of a killed run never blocks a
later one (the file stays; only the lock matters).

In a multi-process run (DDP / DeepSpeed) only global rank 0 takes the lock: the other ranks
are that run's own processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdpo_lightning.errors import RunDirError, RunDirInUseError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".sdpo.lock"
#: Environment variables through which launchers (Lightning, torchrun, SLURM, MPI) give ranks.
RANK_VARIABLES = (
    "RANK",
    "SLURM_PROCID",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "NODE_RANK",
    "LOCAL_RANK",
)


def is_secondary_rank() -> bool:
    """Whether this process is a non-zero rank of a multi-process run (from the environment)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) != 0:
            return True
    return False


class RunLock:
    """The lock of one run directory (a context manager; re-entrant use is not supported).

    Args:
        root: the run directory (``trainer.default_root_dir``); created if missing.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunDirInUseError` if a live run holds it
        (:class:`RunDirError` if the directory cannot be created or written)."""
        if fcntl is None or self._fd is not None:
            return self
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(
                f"trainer.default_root_dir {str(self.root)!r}: cannot create or write the run "
                f"directory ({err.strerror or err}); choose a writable one"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunDirInUseError(
                f"{self.root} is in use by another run (pid {holder}); wait for it to end or set "
                "another trainer.default_root_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it could let two runs lock two inodes)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
