"""Lazy imports of the optional ``analysis`` extra (pandas, matplotlib).

The rest of ``sdpo_lightning`` must import without these packages, so every analysis
function asks for them here, at call time, and gets a clear installation hint if they
are missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install sdpo_lightning[analysis]"


class MissingExtraError(ImportError):
    """An optional dependency of :mod:`sdpo_lightning.analysis` is not installed."""


def _require(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"sdpo_lightning.analysis needs `{package}`, which is not installed; "
            f"install the analysis extra with `{INSTALL_HINT}`"
        ) from err


def require_pandas() -> ModuleType:
    """Returns the ``pandas`` module, or raises :class:`MissingExtraError`."""
    return _require("pandas", "pandas")


def require_pyplot(backend: str | None = None) -> ModuleType:
    """Returns ``matplotlib.pyplot``, or raises :class:`MissingExtraError`.

    Args:
        backend: a matplotlib backend to select first (e.g. ``"Agg"`` for headless
            rendering). ``None`` keeps whatever backend is active (inline in Jupyter).
    """
    matplotlib = _require("matplotlib", "matplotlib")
    if backend is not None:
        matplotlib.use(backend, force=True)
    return _require("matplotlib.pyplot", "matplotlib")
