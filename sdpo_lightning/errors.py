"""Errors a user can fix, and how the console scripts report them.

Every known user error (bad data, bad option values, missing files, unreadable model or
adapter directories, corrupted checkpoints, a run directory in use) derives from
:class:`UserError`. The console scripts (``sdpo``, ``sdpo-prepare``, ``sdpo-report``,
``sdpo-plots``) print such an error as one line ``<prog>: error: <message>`` on stderr and exit
with status 2; the traceback is printed too only in debug mode (``SDPO_DEBUG=1`` or
``--debug``). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TypeVar

#: Exit status of a run stopped by a user error (argparse uses 2 for usage errors too).
EXIT_USER_ERROR = 2
#: Environment variable that turns on debug mode (any value but "", "0", "false", "no").
DEBUG_ENV = "SDPO_DEBUG"
DEBUG_FLAG = "--debug"

T = TypeVar("T")


class UserError(Exception):
    """An error the user can fix; its message says what (file, record, option) and why."""


class ConfigError(UserError, ValueError):
    """An option value is invalid, or a config key is unknown."""


class ModelSourceError(UserError, OSError):
    """A model, tokenizer or adapter directory is missing, incomplete or unreadable."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, corrupted, or does not fit the model."""


class RunDirError(UserError, OSError):
    """The run directory (``default_root_dir``) cannot be created or written."""


class RunDirInUseError(UserError, RuntimeError):
    """Another live run holds the lock of the same ``default_root_dir``."""


def one_line(message: object) -> str:
    """``message`` with its line breaks and runs of blanks folded into single spaces."""
    return " ".join(str(message).split())


def debug_enabled() -> bool:
    """Whether debug mode is on (``SDPO_DEBUG`` set to a true-ish value)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def strip_debug_flag(argv: Sequence[str] | None) -> list[str] | None:
    """Remove ``--debug`` from ``argv``; turn debug mode on if it was there.

    With ``argv=None`` the flag is removed from ``sys.argv`` itself and ``None`` returned, so
    parsers keep reading ``sys.argv``.
    """
    if argv is None:
        if DEBUG_FLAG in sys.argv[1:]:
            # rewritten in place: Lightning's launcher re-runs sys.argv for the other ranks
            sys.argv[1:] = [a for a in sys.argv[1:] if a != DEBUG_FLAG]
            os.environ[DEBUG_ENV] = "1"  # child processes (DeepSpeed / DDP ranks) inherit it
        return None
    args = list(argv)
    if DEBUG_FLAG in args:
        os.environ[DEBUG_ENV] = "1"
    return [a for a in args if a != DEBUG_FLAG]


def report(prog: str, err: BaseException) -> int:
    """Print ``err`` as ``<prog>: error: <message>`` (its traceback first in debug mode).

    Returns:
        :data:`EXIT_USER_ERROR`.
    """
    if debug_enabled():
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def run_main(
    prog: str,
    main: Callable[[list[str] | None], T],
    argv: Sequence[str] | None = None,
    known: tuple[type[BaseException], ...] = (UserError,),
) -> T | int:
    """Run a console script's ``main(argv)``, reporting ``known`` errors in one line.

    ``--debug`` is taken out of ``argv`` first (it turns on debug mode). Errors of other
    types propagate with their traceback.

    Returns:
        What ``main`` returned, or :data:`EXIT_USER_ERROR` after a known error.
    """
    args = strip_debug_flag(argv)
    try:
        return main(args)
    except known as err:
        return report(prog, err)
