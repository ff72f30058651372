"""The argument groups of :class:`~sdpo_lightning.training.module.SDPOModule`.

Each group is a dataclass (rendered by LightningCLI / jsonargparse as a nested section of
``model:`` in ``--help`` and YAML, e.g. ``model.objective.beta``) that checks its own values in
``__post_init__``; a bad value raises a one-line ``ValueError`` naming the field and the value
(``sdpo`` reports it as ``sdpo: error: invalid configuration: ...``).

The flat layout of earlier versions (``model.beta``) is refused with the key's new place
(:func:`check_flat_keys`); hyperparameters stored flat in old checkpoints are regrouped by
:func:`grouped_kwargs`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from sdpo_lightning.errors import ConfigError

Objective = Literal[
    "sft", "sdpo", "dpo", "dpo_k", "dmpo", "ipo", "ipo_k", "simpo", "softmax_simpo", "dynamicpo"
]
#: The objectives, in the order error messages list them (the registry of the preference ones:
#: :data:`sdpo_lightning.training.objectives.OBJECTIVE_SPECS`).
OBJECTIVE_NAMES: tuple[str, ...] = (
    "sft",
    "sdpo",
    "dpo",
    "dpo_k",
    "dmpo",
    "ipo",
    "ipo_k",
    "simpo",
    "softmax_simpo",
    "dynamicpo",
)
#: Objectives that compare no reference: the module runs no reference pass for them.
REFERENCE_FREE: tuple[str, ...] = ("sft", "simpo", "softmax_simpo")
#: Pairwise objectives (exactly one negative) and what to use for K > 1.
PAIRWISE: dict[str, str] = {"dpo": "dpo_k or sdpo", "ipo": "ipo_k", "simpo": "softmax_simpo"}
#: Objectives that read ``token_mean``.
TOKEN_MEAN_OBJECTIVES: tuple[str, ...] = ("ipo", "ipo_k", "simpo", "softmax_simpo")
Dtype = Literal["float32", "bfloat16", "float16"]
ScoringMode = Literal["shared_prefix", "naive"]
ReferenceMode = Literal["live", "cached"]
CacheBuild = Literal["auto", "lazy", "full"]
Protocol = Literal["generation", "ranking", "all_item"]
KvSharing = Literal["auto", "shared", "expand"]


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is one of ``choices`` (the CLI checks ``Literal`` types
    itself; this covers Python callers)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass
class ModelArgs:
    """Where the model and tokenizer come from, and how the model is built.

    Attributes:
        model_name_or_path: HF directory or hub id, or a ``.gguf`` path; ``None`` builds a tiny
            LLaMA from ``tiny_config`` (needs ``tokenizer_path``).
        gguf_file: GGUF file name inside ``model_name_or_path``.
        tokenizer_path: tokenizer directory (default: the model's).
        tiny_config: ``LlamaConfig`` overrides of the in-code tiny model.
        init_seed: weight-init seed of the tiny model (and of the hybrid projector).
        dtype: weights dtype.
        trust_remote_code: allow custom modelling code.
        attn_implementation: ``sdpa`` / ``eager`` / ... (default: transformers' choice).
        init_adapter: a peft adapter directory (the SFT stage's export) to continue from; its
            frozen copy is the reference.
        gradient_checkpointing: trade compute for activation memory.
    """

    model_name_or_path: str | None = None
    gguf_file: str | None = None
    tokenizer_path: str | None = None
    tiny_config: dict[str, Any] | None = None
    init_seed: int = 0
    dtype: Dtype = "float32"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    init_adapter: str | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class ObjectiveArgs:
    """The training objective (formulas, sources and checks: ``docs/objectives.md``).

    Attributes:
        name: ``sft`` | ``sdpo`` | ``dpo`` | ``dpo_k`` | ``dmpo`` | ``ipo`` | ``ipo_k`` |
            ``simpo`` | ``softmax_simpo`` | ``dynamicpo``. ``dpo``, ``ipo`` and ``simpo`` are
            pairwise (``num_negatives`` 1); ``simpo`` and ``softmax_simpo`` are reference-free
            (no reference pass, live or cached).
        beta: β of the implicit reward (IPO: its τ, the target margin is 1/(2β)).
        sft_weight: λ ≥ 0 of the chosen completion's token-mean negative log-likelihood added
            to a preference loss (``loss = preference + λ·NLL(chosen)``, the "DPO + NLL" of
            RPO); 0, the default, is the paper's objective. Ignored by ``sft``.
        num_negatives: K, negatives per example (the pairwise ``dpo``, ``ipo``, ``simpo`` need
            1); linked to the data module.
        gamma: ``simpo`` / ``softmax_simpo``: target reward margin γ ≥ 0 (SimPO's code:
            ``beta * gamma_beta_ratio``, its default 2.0 · 0.25 = 0.5). Ignored by the others.
        token_mean: ``ipo`` / ``ipo_k`` / ``simpo`` / ``softmax_simpo``: compare token-mean
            log-probs (log π(y)/|y|) instead of sums; unset: true for SimPO (its definition),
            false for IPO (the paper's margin; TRL's IPO uses token means). Refused by the
            other objectives.
        dynamicpo_margin: ``dynamicpo``: the fixed margin m of its per-negative β (the code's 2).
        dynamicpo_spread: ``dynamicpo``: s in [0, 1), β_j stays within β·(1 ± s) (the code's
            0.5).
    """

    name: Objective = "sdpo"
    beta: float = 1.0
    sft_weight: float = 0.0
    num_negatives: int = 3
    gamma: float = 0.5
    token_mean: bool | None = None
    dynamicpo_margin: float = 2.0
    dynamicpo_spread: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVE_NAMES:
            raise ValueError(f"objective must be one of {OBJECTIVE_NAMES}, got {self.name!r}")
        if self.name in PAIRWISE and self.num_negatives != 1:
            raise ValueError(
                f"objective {self.name!r} is pairwise: num_negatives must be 1, got "
                f"{self.num_negatives} (use {PAIRWISE[self.name]})"
            )
        if not self.sft_weight >= 0.0:  # also rejects NaN
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight!r}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0.0):
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma!r}")
        if self.token_mean is not None and self.name not in TOKEN_MEAN_OBJECTIVES:
            raise ValueError(
                f"token_mean applies to {TOKEN_MEAN_OBJECTIVES}, not {self.name!r}; leave it unset"
            )
        if not math.isfinite(self.dynamicpo_margin):
            raise ValueError(f"dynamicpo_margin must be finite, got {self.dynamicpo_margin!r}")
        if not 0.0 <= self.dynamicpo_spread < 1.0:
            raise ValueError(f"dynamicpo_spread must be in [0, 1), got {self.dynamicpo_spread!r}")

    @property
    def is_preference(self) -> bool:
        """Whether the objective compares a chosen item with negatives (every one but sft)."""
        return self.name != "sft"

    @property
    def needs_reference(self) -> bool:
        """Whether the objective reads reference log-probs (not sft, simpo, softmax_simpo): the
        module builds no frozen copy, opens no reference cache and runs no reference pass
        otherwise."""
        return self.name not in REFERENCE_FREE


@dataclass
class ScoringArgs:
    """How completions are scored: prompt sharing, the reference's scores and the caches.

    Attributes:
        mode: ``shared_prefix`` (prompt once, completions branch off) | ``naive``.
        reference: ``live`` (reference forward every step) | ``cached`` (scored once, on disk).
        reference_cache_dir: where the cache lives (default ``<root>/reference_cache``).
        reference_cache_build: ``lazy`` (score a row when a batch first needs it, fill the file
            incrementally) | ``full`` (score every row before the first step) | ``auto`` (lazy,
            except full fine-tuning without a frozen copy, which needs ``full``).
        trunk_cache: serve the frozen lower decoder layers (below the lowest LoRA layer, see
            ``lora.layers_to_transform``) from activations computed once per example
            (:mod:`sdpo_lightning.scoring.trunk_cache`); exact, shared-prefix scoring only.
        eval_trunk_dir: ``test``: keep the frozen lower decoder layers' activations of the test
            rows in this directory (one file per embedding + lower layers' weights, named by
            their digest): the first test computes and writes them, every later test of an
            adapter on the same lower layers and rows reads them and runs only the adapted
            upper layers. Serves ranking, constrained generation and free generation with
            ranking; equal to the plain evaluation up to float rounding. Single process.
    """

    mode: ScoringMode = "shared_prefix"
    reference: ReferenceMode = "live"
    reference_cache_dir: str | None = None
    reference_cache_build: CacheBuild = "auto"
    trunk_cache: bool = False
    eval_trunk_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("shared_prefix", "naive"):
            raise ValueError(f"scoring must be 'shared_prefix' or 'naive', got {self.mode!r}")
        if self.reference not in ("live", "cached"):
            raise ValueError(f"reference must be 'live' or 'cached', got {self.reference!r}")
        if self.reference_cache_build not in ("auto", "lazy", "full"):
            raise ValueError(
                "reference_cache_build must be auto, lazy or full, got "
                f"{self.reference_cache_build!r}"
            )


@dataclass
class OptimArgs:
    """AdamW and its learning-rate schedule.

    Attributes:
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps, then cosine decay to ``min_lr_ratio``.
        min_lr_ratio: final learning rate as a fraction of the peak.
    """

    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(
                f"learning_rate must be a finite number >= 0, got {self.learning_rate!r}"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")


@dataclass
class EvalArgs:
    """Evaluation in ``validate`` / ``test`` / ``predict``.

    Attributes:
        eval_protocols: the protocols ``test`` runs: ``generation`` and ``ranking`` (the
            candidate list), ``all_item`` (the whole catalogue, ``docs/all_item.md``).
        max_new_tokens: generation budget of the paper protocol (and of the all-item
            protocol's free generation).
        constrained: restrict generation to candidate titles (a prefix trie).
        length_normalize: ranking by mean instead of summed token log-likelihood.
        val_generation: also run greedy generation in validation (``val/hr@1``).
        val_ranking: also rank the candidates in validation (``val/rank/hr@1``, ...): a cheap
            learning curve of the ranking protocol.
        catalogue_file: ``all_item``: the catalogue (``catalogue.json`` of ``sdpo-prepare``, or
            ``sdpo-prepare catalogue`` of candidate-list files); every test target must be in it.
        top_n: ``all_item``: N, items recommended per row (HR@k and NDCG@k for k <= N).
        beam_width: ``all_item``: beams kept per row (default ``top_n``; at least ``top_n``; as
            many as the catalogue has items makes the top N exact).
        beam_length_penalty: ``all_item``: 0 (default) ranks items by their summed token
            log-probs; ``a > 0`` by ``sum / n_tokens ** a`` (length normalisation, which favours
            long titles: D3, arXiv 2406.14900).
        all_item_prompts: ``all_item``: history-only templates: a preset (``movies``, ``music``,
            ``books``), a template with ``{history}`` only, or a list; ``auto``: the preset of
            the data's ``prompt_templates`` domain.
        all_item_free_generation: ``all_item``: also decode greedily from the history-only
            prompt (ValidRatio: the answer names one catalogue title).
        kv_sharing: ``all_item``: how beams read their prompt's KV cache: ``shared`` (in place),
            ``expand`` (a copy per beam), ``auto`` (``shared`` where the model supports it).
    """

    eval_protocols: list[Protocol] = field(default_factory=lambda: ["generation"])
    max_new_tokens: int = 32
    constrained: bool = False
    length_normalize: bool = False
    val_generation: bool = False
    val_ranking: bool = False
    catalogue_file: str | None = None
    top_n: int = 20
    beam_width: int | None = None
    beam_length_penalty: float = 0.0
    all_item_prompts: str | list[str] = "auto"
    all_item_free_generation: bool = True
    kv_sharing: KvSharing = "auto"

    def __post_init__(self) -> None:
        self.eval_protocols = list(self.eval_protocols or ["generation"])
        bad = set(self.eval_protocols) - {"generation", "ranking", "all_item"}
        if bad:
            raise ValueError(
                f"unknown eval_protocols {sorted(bad)}; choose from generation, ranking, all_item"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if "all_item" in self.eval_protocols and not self.catalogue_file:
            raise ValueError(
                "eval_protocols all_item needs catalogue_file (catalogue.json of "
                "sdpo-prepare, or `sdpo-prepare catalogue` of the data files)"
            )
        if self.top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {self.top_n!r}")
        if self.beam_width is not None and self.beam_width < self.top_n:
            raise ValueError(f"beam_width must be >= top_n ({self.top_n}), got {self.beam_width!r}")
        if not (math.isfinite(self.beam_length_penalty) and self.beam_length_penalty >= 0):
            raise ValueError(
                "beam_length_penalty must be a finite number >= 0, got "
                f"{self.beam_length_penalty!r}"
            )
        _choice("kv_sharing", self.kv_sharing, ("auto", "shared", "expand"))


@dataclass
class OutputArgs:
    """Where results go and how they are labelled.

    Attributes:
        export_dir: where ``fit`` exports the adapter / model (default ``<root>/export``).
        output_dir: where ``test`` writes predictions and summary (default: the trainer's
            ``default_root_dir``).
        run_name: name used in ``summary.json`` (default: the root directory's name).
        method: method label in ``summary.json`` (default: the objective), e.g. ``Vanilla``.
    """

    export_dir: str | None = None
    output_dir: str | None = None
    run_name: str | None = None
    method: str | None = None


#: The groups of :class:`~sdpo_lightning.training.module.SDPOModule`, by argument name (``lora`` and
#: ``hybrid``, settings of their own modules, are the other two arguments).
GROUPS: dict[str, type] = {
    "source": ModelArgs,
    "objective": ObjectiveArgs,
    "scoring": ScoringArgs,
    "optim": OptimArgs,
    "eval": EvalArgs,
    "output": OutputArgs,
}

#: Flat name of an earlier version → (group, field) of today's layout.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{f.name: (group, f.name) for group, cls in GROUPS.items() for f in dataclasses.fields(cls)},
    "objective": ("objective", "name"),
    "scoring": ("scoring", "mode"),
}
del FLAT_KEYS["name"], FLAT_KEYS["mode"]

G = TypeVar("G")


def as_group(cls: type[G], value: G | Mapping[str, Any] | None) -> G:
    """``value`` as a ``cls`` instance: itself, built from a mapping, or the defaults.

    Raises:
        ConfigError: for a key ``cls`` does not have.
    """
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field {unknown[0]!r}; fields: {sorted(names)}"
            )
        return cls(**value)
    raise ConfigError(f"expected {cls.__name__} or a mapping, got {value!r}")


def moved_message(key: str) -> str:
    """``model.<key> moved to model.<group>.<field>`` for a flat key of an earlier version."""
    group, name = FLAT_KEYS[key]
    return f"model.{key} moved to model.{group}.{name}"


def is_flat_value(key: str, value: Any) -> bool:
    """Whether ``model.<key>: value`` is in the flat layout of an earlier version: a flat name
    that is no group, or a group's name (``objective``, ``scoring``) given a plain value."""
    if key not in FLAT_KEYS:
        return False
    if key in GROUPS:
        return value is not None and not isinstance(value, Mapping)
    return True


def check_flat_keys(model: Mapping[str, Any] | None) -> None:
    """Refuse a ``model:`` section in the flat layout of an earlier version.

    Raises:
        ConfigError: naming the first flat key and its new place.
    """
    if not isinstance(model, Mapping):
        return
    if isinstance(model.get("init_args"), Mapping):
        model = model["init_args"]
    for key, value in model.items():
        if is_flat_value(str(key), value):
            raise ConfigError(moved_message(str(key)))


def grouped_kwargs(flat: Mapping[str, Any]) -> dict[str, Any]:
    """SDPOModule arguments of the flat layout (old checkpoints' hyperparameters) regrouped:
    ``{"beta": 2}`` → ``{"objective": {"beta": 2}}``. A group given as a mapping is merged with
    the flat keys of the same group; ``lora``, ``hybrid`` and keys this table does not know
    (the module refuses them) are kept."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if is_flat_value(key, value):
            group, name = FLAT_KEYS[key]
            out.setdefault(group, {})[name] = value
        elif key in GROUPS and isinstance(value, Mapping):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def is_flat(hparams: Mapping[str, Any]) -> bool:
    """Whether ``hparams`` holds a key of the flat layout."""
    return any(is_flat_value(str(k), v) for k, v in hparams.items())


def plain_hparams(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every dataclass (group) replaced by a dict of its fields: the form kept in
    ``hparams.yaml`` and checkpoints."""
    return {
        k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
        for k, v in values.items()
    }
