"""sdpo_lightning: softmax DPO for LLM-based sequential recommendation on PyTorch Lightning.

Layout (``docs/architecture.md`` has the module map): :mod:`.cli` (``sdpo``), :mod:`.training`
(the LightningModule, its arguments, objectives, negative selection, DeepSpeed), :mod:`.modeling`
(policy, LoRA, hybrid item tokens, the offline tokenizer), :mod:`.scoring` (completion log-probs,
packing, the trunk and reference caches), :mod:`.evaluation` (protocols, decoding, metrics,
reports), :mod:`.data`, :mod:`.runtime` (processes, run lock, checkpoints, exports),
:mod:`.baselines`, :mod:`.analysis`.

The modules that lived at the top level before these subpackages keep their old dotted names
(:data:`MOVED`): ``import sdpo_lightning.module`` gives the module object of
``sdpo_lightning.training.module`` itself, so class paths written into configs and checkpoints
(``sdpo_lightning.strategies.SDPODeepSpeedStrategy``, ``sdpo_lightning.module.SDPOModule``)
keep resolving. The old names are resolved lazily, on first import, by a finder on
``sys.meta_path``; no file is left at the old place.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

#: old module name (below ``sdpo_lightning``) → its current dotted name below ``sdpo_lightning``
MOVED: dict[str, str] = {
    "checkpoint_io": "runtime.checkpoint_io",
    "constrained": "evaluation.constrained",
    "decoding": "evaluation.decoding",
    "evaluator": "evaluation.evaluator",
    "export_dir": "runtime.export_dir",
    "hybrid": "modeling.hybrid",
    "models": "modeling.models",
    "module": "training.module",
    "module_args": "training.module_args",
    "objectives": "training.objectives",
    "packing": "scoring.packing",
    "processes": "runtime.processes",
    "reference_cache": "scoring.reference_cache",
    "run_lock": "runtime.run_lock",
    "strategies": "training.strategies",
    "tokenizer": "modeling.tokenizer",
    "trunk_cache": "scoring.trunk_cache",
}
# ``sdpo_lightning.scoring`` (the old scoring module) is now the package of that name, which
# re-exports the old module's names from ``sdpo_lightning.scoring.logps``.

_OLD_TO_NEW = {f"{__name__}.{old}": f"{__name__}.{new}" for old, new in MOVED.items()}
_NEW_TO_OLD = {new: old for old, new in _OLD_TO_NEW.items()}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module object of its new one (imported if need be)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the target module ran when it was imported


class _RegisteringLoader(importlib.machinery.SourceFileLoader):
    """The usual source loader of a moved module, which also enters the module under its old
    name once it has run: code that looks an old class path up in ``sys.modules`` without
    importing it (Lightning's check of a checkpoint's ``_class_path``) finds it too."""

    def exec_module(self, module: ModuleType) -> None:
        super().exec_module(module)
        _register_old_name(module.__name__, module)


def _register_old_name(new: str, module: ModuleType) -> None:
    old = _NEW_TO_OLD[new]
    sys.modules.setdefault(old, module)
    parent, _, child = old.rpartition(".")
    if parent in sys.modules and not hasattr(sys.modules[parent], child):
        setattr(sys.modules[parent], child, module)


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves the old dotted names of moved modules (:data:`MOVED`) to the new modules."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname in _OLD_TO_NEW:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(_OLD_TO_NEW[fullname]))
        if fullname in _NEW_TO_OLD:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
                spec.loader = _RegisteringLoader(spec.loader.name, spec.loader.path)
            return spec
        return None


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())


def __getattr__(name: str) -> ModuleType:
    """``sdpo_lightning.<old name>`` as an attribute (e.g. after ``import sdpo_lightning``)."""
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
