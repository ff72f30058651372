"""The LightningModule: SFT and DPO / DPO-K / S-DPO training, evaluation in validate/test.

The module is where the policy and the reference meet the data: it picks each batch's negatives
(:mod:`sdpo_lightning.training.negatives`), and hands the reference cache and the evaluator the
narrow views they read (:meth:`SDPOModule.reference_source`, :meth:`SDPOModule.eval_model`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from sdpo_lightning.data.collate import select_completions
from sdpo_lightning.data.negatives import NegativeSampling
from sdpo_lightning.evaluation.all_item import AllItemProtocol
from sdpo_lightning.evaluation.evaluator import EvalModel, Evaluator
from sdpo_lightning.modeling.hybrid import (
    HYBRID_SUBDIR,
    HybridSettings,
    ItemTable,
    curriculum_probability,
    hybrid_embedding,
    install_hybrid,
    save_projector,
    strip_item_tokens,
    text_form_rows,
)
from sdpo_lightning.modeling.models import (
    LoraSettings,
    apply_lora,
    build_policy,
    is_peft,
    load_tokenizer,
    reference_mode,
    trainable_state_dict,
)
from sdpo_lightning.runtime.processes import processes_of
from sdpo_lightning.scoring.logps import CompletionLogps, completion_logps
from sdpo_lightning.scoring.reference_cache import (
    ReferenceCache,
    ReferenceSource,
    build_mode,
    eval_mode,
    reference_identity,
)
from sdpo_lightning.scoring.trunk_cache import TrunkCache, frozen_layer_count, lower_layers_identity
from sdpo_lightning.training.beam_negatives import CatalogueBeamNegatives
from sdpo_lightning.training.module_args import (
    EvalArgs,
    ModelArgs,
    ObjectiveArgs,
    OptimArgs,
    OutputArgs,
    ScoringArgs,
    as_group,
    plain_hparams,
)
from sdpo_lightning.training.negatives import (
    VAL_EPOCH,
    NegativeSelector,
    OnPolicyNegatives,
    make_selector,
    validation_selector,
)
from sdpo_lightning.training.objective_call import objective_loss
from sdpo_lightning.training.objectives import reward_metrics, sft_loss

log = logging.getLogger(__name__)


class SDPOModule(pl.LightningModule):
    """A causal LM trained as a sequential recommender.

    Configured by argument groups (:mod:`sdpo_lightning.training.module_args`; in YAML and on the
    command line ``model.<group>.<field>``, e.g. ``--model.objective.beta 2``); each may be
    given as its dataclass or as a mapping of its fields. ``docs/configuration.md`` lists
    every field.

    Args:
        source: where the model and tokenizer come from (:class:`ModelArgs`).
        lora: LoRA settings; ``None`` is full fine-tuning (unless ``source.init_adapter`` is
            given).
        hybrid: LLaRA hybrid item prompts (:mod:`sdpo_lightning.modeling.hybrid`): every title in the
            prompt followed by an item token embedded by a projection of a recommender's item
            embedding. Found on its own in a ``source.init_adapter`` exported from a hybrid run.
        objective: the training objective (:class:`ObjectiveArgs`).
        scoring: completion scoring, reference scores and caches (:class:`ScoringArgs`).
        optim: AdamW and its schedule (:class:`OptimArgs`).
        eval: evaluation protocols and generation (:class:`EvalArgs`).
        output: export and report folders, run labels (:class:`OutputArgs`).

    Negatives: the module picks the K negatives of every training and validation batch
    (:meth:`on_after_batch_transfer`) with :attr:`negative_selector`, by default the selector of
    the data module's ``negative_sampling`` (set at ``setup``); assign another
    :class:`~sdpo_lightning.training.negatives.NegativeSelector` before ``fit`` to change how
    they are chosen. Validation negatives are random, drawn once.

    Raises:
        ValueError: for a value a group refuses, or a hybrid curriculum in a preference stage.
        ConfigError: for a group given as a mapping with a key the group does not have.
    """

    def __init__(
        self,
        source: ModelArgs = ModelArgs(),
        lora: LoraSettings | None = None,
        hybrid: HybridSettings | None = None,
        objective: ObjectiveArgs = ObjectiveArgs(),
        scoring: ScoringArgs = ScoringArgs(),
        optim: OptimArgs = OptimArgs(),
        eval: EvalArgs = EvalArgs(),
        output: OutputArgs = OutputArgs(),
    ) -> None:
        super().__init__()
        groups: dict[str, Any] = {
            "source": as_group(ModelArgs, source),
            "objective": as_group(ObjectiveArgs, objective),
            "scoring": as_group(ScoringArgs, scoring),
            "optim": as_group(OptimArgs, optim),
            "eval": as_group(EvalArgs, eval),
            "output": as_group(OutputArgs, output),
        }
        groups = {k: dataclasses.replace(v) for k, v in groups.items()}  # never a shared default
        lora = as_group(LoraSettings, lora) if lora is not None else None
        hybrid = _hybrid_settings(hybrid, groups["source"].init_adapter)
        curriculum = (hybrid.curriculum_start, hybrid.curriculum_end) if hybrid else (1.0, 1.0)
        if groups["objective"].is_preference and curriculum != (1.0, 1.0):
            raise ValueError(
                "hybrid curriculum (text-only prompts for some steps) is an SFT schedule; the "
                "preference objectives compare policy and reference on the same hybrid prompts: "
                "set hybrid.curriculum_start and curriculum_end to 1"
            )
        # plain data in hparams.yaml and checkpoints; the groups themselves at run time
        self.save_hyperparameters(plain_hparams({**groups, "lora": lora, "hybrid": hybrid}))
        self._hparams_name = "kwargs"
        self.hparams.update(groups, lora=lora, hybrid=hybrid)
        self.item_table = ItemTable.load(hybrid.item_table) if hybrid is not None else None
        src = groups["source"]
        self.tokenizer = load_tokenizer(
            src.model_name_or_path, src.gguf_file, src.tokenizer_path, src.trust_remote_code
        )
        self.policy: torch.nn.Module | None = None
        self.reference_model: torch.nn.Module | None = None
        self.ref_cache: ReferenceCache | None = None
        self.strict_loading = False  # checkpoints carry only the trainable weights
        self.evaluators: dict[str, Evaluator] = {}
        self.trunk: TrunkCache | None = None
        self._eval_trunk: tuple[TrunkCache, Path, str] | None = None  # (cache, file, identity)
        self.negative_selector: NegativeSelector | None = (
            None  # None: the data's strategy (see setup)
        )
        self.sampling: NegativeSampling | None = None  # the data's K, strategy, seed (see setup)
        self._selectors: dict[str, NegativeSelector] = {}  # "train", "val"
        self._all_item: AllItemProtocol | None = None  # see all_item_protocol()

    # ------------------------------------------------------------------ negatives
    def setup(self, stage: str) -> None:
        """Take the negative-sampling settings of the trainer's data module
        (:attr:`RecDataModule.sampling <sdpo_lightning.data.datamodule.RecDataModule.sampling>`;
        without one: random, K of ``objective.num_negatives``, seed 0) and make the selectors:
        training's is :attr:`negative_selector` when one was assigned, else that of the data's
        strategy (``hard`` / ``tempered`` rank by :meth:`reference_candidate_scores`,
        ``on_policy`` by :meth:`policy_candidate_scores`)."""
        dm = self._trainer.datamodule if self._trainer is not None else None
        sampling = getattr(dm, "sampling", None)
        if not isinstance(sampling, NegativeSampling):
            sampling = NegativeSampling(k=self.hparams.objective.num_negatives)
        self.sampling = sampling
        self._check_policy_negatives(sampling)
        train = self.negative_selector
        if train is None:
            current = self._selectors.get("train")
            # on_policy keeps its per-row scores across setup calls of one run
            if isinstance(current, OnPolicyNegatives) and sampling.strategy == "on_policy":
                train = current
            elif sampling.strategy == "on_policy_beam":
                train = (
                    current
                    if isinstance(current, CatalogueBeamNegatives)
                    else self._beam_selector(dm, sampling)
                )
            else:
                train = make_selector(
                    sampling,
                    self.reference_candidate_scores,
                    self.policy_candidate_scores,
                    lambda: self.global_step,
                )
        self._selectors = {"train": train, "val": validation_selector(sampling)}

    def _check_policy_negatives(self, sampling: NegativeSampling) -> None:
        """Refuse policy-scored negatives whose forwards can differ between processes under
        DeepSpeed ZeRO-3 (every forward gathers the shards: all processes must run the same ones)."""
        from sdpo_lightning.errors import ConfigError
        from sdpo_lightning.training import strategies

        if not sampling.needs_policy or strategies.zero3_config(self._trainer) is None:
            return
        if sampling.strategy == "on_policy_beam" or sampling.refresh_steps > 1:
            raise ConfigError(
                f"data.negative_sampling {sampling.strategy} with on_policy_refresh_steps "
                f"{sampling.refresh_steps}: under DeepSpeed ZeRO-3 the processes would run different "
                "forwards (beam lengths, rows due); use on_policy with on_policy_refresh_steps 1"
            )

    def _beam_selector(self, dm: Any, sampling: NegativeSampling) -> NegativeSelector:
        """``on_policy_beam``: the policy's top catalogue items (the data module's catalogue)."""
        from sdpo_lightning.errors import ConfigError

        catalogue = getattr(dm, "catalogue", None)
        if catalogue is None:
            raise ConfigError(
                "data.negative_sampling on_policy_beam needs data.train_protocol all_item "
                "(its catalogue_file is searched)"
            )
        return CatalogueBeamNegatives(
            lambda: self.policy,
            catalogue,
            self.tokenizer,
            dm.train_prompts.completion_prefix,
            lambda: self.global_step,
            sampling.refresh_steps,
            sampling.beam_width,
            self.hparams.eval.kv_sharing,
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Training and validation batches: pick K negatives of every example (training: the
        selector, re-drawn each epoch; validation: random, the same every time) and add the
        chosen completion and the negatives (``completion_*`` keys, the chosen one first), and
        what the selector reports of them (``negative_stats``, training)."""
        trainer = self._trainer
        if trainer is None or not (
            trainer.training or trainer.validating or trainer.sanity_checking
        ):
            return batch
        if not self._selectors:
            self.setup("fit" if trainer.training else "validate")
        if trainer.training:
            selector, epoch = self._selectors["train"], trainer.current_epoch
        else:
            selector, epoch = self._selectors["val"], VAL_EPOCH
        batch = selector.propose(batch, self.sampling.k, epoch)
        out = select_completions(batch, selector.select(batch, self.sampling.k, epoch))
        if trainer.training:
            stats = selector.stats()
            if stats:  # logged with the step (train/negatives/<name>)
                out["negative_stats"] = stats
        return out

    # ------------------------------------------------------------------ model
    def _build(self) -> torch.nn.Module:
        src: ModelArgs = self.hparams.source
        return build_policy(
            src.model_name_or_path,
            self.tokenizer,
            src.gguf_file,
            src.tiny_config,
            src.init_seed,
            src.dtype,
            src.trust_remote_code,
            src.attn_implementation,
        )

    def configure_model(self) -> None:
        """Build the policy here so DeepSpeed ZeRO-3 can shard it at creation.

        Under ZeRO-3 (see ``training/strategies.py``) a model read from a Hugging Face source is sharded
        as it loads, and so is the frozen reference copy of full fine-tuning; LoRA adapters, the
        tiny in-code model and GGUF files are built whole and partitioned when the DeepSpeed
        engine starts.
        """
        if self.policy is not None:
            return
        from sdpo_lightning.training import strategies

        h = self.hparams
        ds_config = strategies.zero3_config(self._trainer)
        if ds_config is not None:  # transformers holds it by weak reference: keep it alive
            self._hf_ds_config = strategies.zero3_hf_config(ds_config)
        base = self._build_base()
        self._install_hybrid(base)
        with strategies.outside_zero_init():
            policy = apply_lora(base, h.lora, h.source.init_adapter)
        emb = hybrid_embedding(policy) if h.hybrid is not None else None
        if emb is not None:  # peft froze every base weight: the projector trains by the setting
            train = h.hybrid.train_projector
            train = not h.objective.is_preference if train is None else train
            fn = getattr(getattr(self._trainer, "state", None), "fn", None)
            if (
                fn is not None and fn != "fit"
            ):  # validate / test / predict: frozen, so the trunk caches apply
                train = False
            for p in (*emb.projector.parameters(), emb.unknown):
                p.requires_grad_(train)
        if h.source.gradient_checkpointing:
            policy.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.policy = policy.train()  # from_pretrained returns eval mode
        if h.objective.needs_reference and not is_peft(policy) and h.scoring.reference == "live":
            ref = self._build_base().eval()
            ref.requires_grad_(False)
            self.reference_model = ref

    def _install_hybrid(self, base: torch.nn.Module) -> None:
        """Hybrid prompts: put the item-token embedding into ``base`` (the projector read from
        ``init_adapter``'s hybrid folder when it has one, else initialised from ``init_seed``)."""
        h = self.hparams
        if h.hybrid is None:
            return
        adapter = h.source.init_adapter
        saved = Path(adapter) / HYBRID_SUBDIR if adapter else None
        install_hybrid(
            base,
            self.item_table,
            h.hybrid.projector_hidden,
            seed=h.source.init_seed,
            projector_dir=saved if saved is not None and saved.is_dir() else None,
        )

    def _build_base(self) -> torch.nn.Module:
        """``_build`` for ``configure_model``. Under ZeRO-3 the tiny in-code model (same weights
        as without DeepSpeed) and GGUF files (transformers loads them through a quantizer, which
        cannot fill ZeRO-3 shards) are built whole and partitioned when the engine starts."""
        from sdpo_lightning.training import strategies

        src: ModelArgs = self.hparams.source
        path = src.model_name_or_path
        if path is None or src.gguf_file or str(path).endswith(".gguf"):
            with strategies.unsharded():
                return self._build()
        if strategies.zero3_config(self._trainer) is not None:  # see import_model_class
            strategies.import_model_class(path, src.trust_remote_code)
        return self._build()

    @property
    def is_preference(self) -> bool:
        """Whether the objective compares the chosen item with negatives (every one but sft);
        ``objective.needs_reference`` says whether it reads the reference too."""
        return self.hparams.objective.is_preference

    # ------------------------------------------------------------------ scoring
    def score(
        self, batch: dict[str, Any], ids: torch.Tensor, mask: torch.Tensor, model=None, mode=None
    ):
        """Summed completion log-probs (B, N) and token counts of ``ids`` after the prompts."""
        model = model if model is not None else self.policy
        scoring: ScoringArgs = self.hparams.scoring
        if (
            scoring.trunk_cache
            and model is self.policy
            and "candidate_input_ids" in batch
            and (mode or scoring.mode) == "shared_prefix"
        ):
            if self.trunk is None:
                n_lower = frozen_layer_count(self.policy)
                if n_lower == 0 and hybrid_embedding(self.policy) is not None:
                    raise ValueError(
                        "trunk_cache: the hybrid projector trains in this stage and feeds the lowest "
                        "layer, so no layer is frozen; set model.scoring.trunk_cache false "
                        "for hybrid SFT (the "
                        "preference stages freeze the projector and can use it)"
                    )
                if n_lower == 0:
                    raise ValueError(
                        "trunk_cache: the lowest decoder layer is trainable; put LoRA on the "
                        "top layers only (lora.layers_to_transform)"
                    )
                self.trunk = TrunkCache(n_lower)
            return self.trunk.completion_logps(model, batch, ids, mask)
        return completion_logps(
            model,
            batch["prompt_input_ids"],
            batch["prompt_attention_mask"],
            ids,
            mask,
            mode=mode or scoring.mode,
        )

    @torch.no_grad()
    def reference_logps(
        self, batch: dict[str, Any], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Reference log-probs of the given completions (B, N), live."""
        if self.reference_model is not None:
            return self.score(batch, ids, mask, model=self.reference_model).logps
        with reference_mode(self.policy):
            return self.score(batch, ids, mask).logps

    @contextlib.contextmanager
    def reference_scorer(self) -> Iterator[tuple[torch.nn.Module, Callable]]:
        """Yield ``(model, scorer)`` where ``scorer(batch, model)`` gives the reference
        log-likelihood of every candidate (B, M). Full fine-tuning without a live frozen
        copy builds a temporary one from the source (the policy may already have moved)."""

        def scorer(batch: dict[str, Any], model: torch.nn.Module) -> torch.Tensor:
            ids, mask = batch["candidate_input_ids"], batch["candidate_attention_mask"]
            return self.score(batch, ids, mask, model=model, mode="shared_prefix").logps

        if self.reference_model is not None:
            yield self.reference_model, scorer
        elif is_peft(self.policy):
            with reference_mode(self.policy):
                yield self.policy, scorer
        else:
            from sdpo_lightning.training import strategies

            with strategies.unsharded():  # a temporary, unmanaged copy: never ZeRO-3-sharded
                ref = self._build().to(self.device).eval()
            try:
                yield ref, scorer
            finally:
                del ref

    def reference_source(self) -> ReferenceSource:
        """What the reference cache reads of the model side: :meth:`reference_scorer` (with the
        policy and the reference in eval mode), the reference's identity, the device and the
        trainer's processes (read now: build it where it is used)."""

        @contextlib.contextmanager
        def scoring() -> Iterator[Callable[[dict[str, Any]], torch.Tensor]]:
            with self.reference_scorer() as (model, scorer), eval_mode(self.policy, model):
                yield lambda batch: scorer(batch, model)

        return ReferenceSource(
            scoring,
            lambda: reference_identity(self.hparams.source),
            self.device,
            processes_of(self._trainer),
        )

    def reference_cache_build_mode(self) -> str:
        """``lazy`` or ``full``: ``model.scoring.reference_cache_build`` with ``auto`` resolved
        (:func:`~sdpo_lightning.scoring.reference_cache.build_mode`) for this model's reference."""
        at_hand = self.reference_model is not None or is_peft(self.policy)
        return build_mode(self.hparams.scoring.reference_cache_build, at_hand)

    def _open_reference_cache(self) -> ReferenceCache:
        """Open (``lazy``) or load-or-build (``full``) the reference tables of the trainer's data
        module, in ``model.scoring.reference_cache_dir`` (default
        ``<default_root_dir>/reference_cache``)."""
        trainer = self.trainer
        root = self.hparams.scoring.reference_cache_dir or os.path.join(
            trainer.default_root_dir, "reference_cache"
        )
        if self.reference_cache_build_mode() == "full":
            return ReferenceCache.build(self.reference_source(), trainer.datamodule, root)
        return ReferenceCache.open(self.reference_source(), trainer.datamodule, root)

    def reference_candidate_scores(self, batch: dict[str, Any]) -> torch.Tensor:
        """Reference log-likelihood of every candidate (B, M) from the cache — hard-negative
        mining. The cache is opened on first use (with ``reference: live`` too); rows not scored
        yet are scored now, all their candidates, before any negative is drawn."""
        split = self._split()
        if self.ref_cache is None or split not in self.ref_cache.tables:
            self.ref_cache = self._open_reference_cache()
        return self.ref_cache.scores_for(self.reference_source(), split, batch)

    @torch.no_grad()
    def policy_candidate_scores(self, batch: dict[str, Any]) -> torch.Tensor:
        """The current policy's log-likelihood of every candidate (B, M) — on-policy negatives.
        One shared-prefix pass without gradient, dropout off (eval mode, restored after): the
        ranking the evaluator would see now, the same for the same weights."""
        with eval_mode(self.policy):
            ids, mask = batch["candidate_input_ids"], batch["candidate_attention_mask"]
            return self.score(batch, ids, mask, mode="shared_prefix").logps  # (B, M)

    def _split(self) -> str:
        return "fit" if self.trainer.training else "validate"

    def _reference_for(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.hparams.scoring.reference == "cached":
            split = self._split()
            if (
                self.ref_cache is None or split not in self.ref_cache.tables
            ):  # e.g. `validate` alone
                self.ref_cache = self._open_reference_cache()
            all_scores = self.ref_cache.scores_for(self.reference_source(), split, batch).to(
                self.device
            )  # (B, M)
            return torch.gather(all_scores, 1, batch["completion_index"])  # (B, N)
        # live: like the cache, score with dropout off (a LoRA reference adapter has dropout)
        with eval_mode(self.reference_model if self.reference_model is not None else self.policy):
            return self.reference_logps(
                batch, batch["completion_input_ids"], batch["completion_attention_mask"]
            )

    # ------------------------------------------------------------------ steps
    def _curriculum(self, batch: dict[str, Any]) -> dict[str, Any]:
        """LLaRA's curriculum: some training prompts lose their item tokens (text form), with a
        probability falling from ``1 - curriculum_start`` to ``1 - curriculum_end`` over the run."""
        hyb: HybridSettings | None = self.hparams.hybrid
        if hyb is None or (hyb.curriculum_start, hyb.curriculum_end) == (1.0, 1.0):
            return batch
        step, total = self.global_step, int(self.trainer.estimated_stepping_batches)
        p = curriculum_probability(step, total, hyb.curriculum_start, hyb.curriculum_end)
        self.log(
            "train/hybrid_probability",
            p,
            on_step=True,
            on_epoch=False,
            batch_size=len(batch["index"]),
        )
        rows = text_form_rows(batch["index"].tolist(), self.hparams.source.init_seed, step, p)
        return strip_item_tokens(batch, rows)

    def _step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        if split == "train":
            batch = self._curriculum(batch)
        ids, mask = batch["completion_input_ids"], batch["completion_attention_mask"]  # (B, N, C)
        obj: ObjectiveArgs = self.hparams.objective
        if not self.is_preference:
            out = self.score(batch, ids[:, :1], mask[:, :1])
            loss = sft_loss(out.logps[:, 0], out.n_tokens[:, 0]).mean()
            metrics = {"loss": loss, "logps/chosen": out.logps[:, 0].detach().mean()}
        else:
            scored = self.score(batch, ids, mask)
            pol = scored.logps  # (B, 1 + K)
            # (B, 1 + K); reference-free objectives (simpo, softmax_simpo): no reference pass
            ref = self._reference_for(batch) if obj.needs_reference else None
            out = objective_loss(obj, pol, scored.n_tokens, ref)
            loss = out.losses.mean()
            metrics = {"loss": loss, **reward_metrics(out, pol[:, 0], pol[:, 1:])}
            if obj.sft_weight > 0:
                nll = sft_loss(pol[:, 0], scored.n_tokens[:, 0]).mean()
                loss = loss + obj.sft_weight * nll
                metrics.update(
                    loss=loss,
                    **{"loss/preference": out.losses.mean().detach(), "loss/sft": nll.detach()},
                )
        bs = ids.shape[0]
        on_step = split == "train"
        opts = dict(on_step=on_step, on_epoch=not on_step, batch_size=bs, sync_dist=not on_step)
        if on_step and batch.get("negative_stats"):
            self.log_dict(
                {f"train/negatives/{k}": float(v) for k, v in batch["negative_stats"].items()},
                **opts,
            )
        self.log(f"{split}/loss", metrics.pop("loss"), prog_bar=True, **opts)
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, **opts)
        return loss

    def on_train_epoch_start(self) -> None:
        # peft's from_pretrained leaves the model in eval mode (dropout off); train it
        self.policy.train()
        if self.reference_model is not None:
            self.reference_model.eval()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")
        settings: EvalArgs = self.hparams.eval
        protocols = [
            name
            for name, on in (
                ("generation", settings.val_generation),
                ("ranking", settings.val_ranking),
            )
            if on
        ]
        if protocols:
            self._evaluator("val", protocols).update(self.eval_model(), batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        ev = self._evaluator("test", self.hparams.eval.eval_protocols)
        ev.update(self.eval_model(), batch)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        ev = self._evaluator("predict", self.hparams.eval.eval_protocols)
        return ev.update(self.eval_model(), batch)

    def eval_model(self) -> EvalModel:
        """What evaluation reads of the model side: the policy, its tokenizer, the generation
        and ranking settings, the persisted trunk (:meth:`eval_trunk`) and the ranking scorer of
        the reference path (read now: build it where it is used)."""
        settings: EvalArgs = self.hparams.eval

        def score(batch: dict[str, Any]) -> CompletionLogps:
            ids, mask = batch["candidate_input_ids"], batch["candidate_attention_mask"]
            return self.score(batch, ids, mask, mode="shared_prefix")

        trainer = self._trainer
        all_item = None
        if (
            "all_item" in settings.eval_protocols
            and trainer is not None
            and (trainer.testing or trainer.predicting)
        ):
            all_item = self.all_item_protocol()
        return EvalModel(
            model=self.policy,
            tokenizer=self.tokenizer,
            max_new_tokens=settings.max_new_tokens,
            constrained=settings.constrained,
            length_normalize=settings.length_normalize,
            trunk=self.eval_trunk,
            score=score,
            all_item=all_item,
        )

    def all_item_protocol(self) -> AllItemProtocol:
        """The all-item protocol of ``test`` / ``predict`` (``docs/all_item.md``), made on first
        use: the catalogue of ``eval.catalogue_file``; history-only prompts
        (``eval.all_item_prompts``, ``auto``: the history-only preset of the data module's
        ``prompt_templates`` domain) with the data module's seed, separator, completion prefix
        and ``max_length``. Every target of the split is checked against the catalogue first.

        Raises:
            ConfigError: ``auto`` prompts for data templates of no preset domain, or hybrid
                item prompts.
            DataFormatError: the catalogue file, or a target missing from it.
        """
        if self._all_item is not None:
            return self._all_item
        from sdpo_lightning.data.catalogue import load_catalogue
        from sdpo_lightning.data.prompts import PromptBuilder, history_preset_of
        from sdpo_lightning.errors import ConfigError

        settings: EvalArgs = self.hparams.eval
        if self.item_table is not None:
            raise ConfigError(
                "eval_protocols all_item does not support hybrid item prompts (model.hybrid) yet"
            )
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        data_prompts = getattr(dm, "prompts", None)
        templates = settings.all_item_prompts
        if templates == "auto":
            given = getattr(getattr(dm, "hparams", None), "prompt_templates", None)
            templates = history_preset_of(given) if given is not None else None
            if templates is None and data_prompts is not None:
                templates = history_preset_of(data_prompts.templates)
            if templates is None:
                raise ConfigError(
                    "model.eval.all_item_prompts auto: the data's prompt_templates are no preset "
                    "(movies, music, books); name a preset or give history-only templates"
                )
        builder = PromptBuilder(
            templates,
            seed=getattr(data_prompts, "seed", 0),
            separator=getattr(data_prompts, "separator", ", "),
            completion_prefix=getattr(data_prompts, "completion_prefix", "auto"),
            history_only=True,
        )
        split = "predict" if trainer is not None and trainer.predicting else "test"
        source = (getattr(dm, "files", {}) or {}).get(split) or split
        catalogue = load_catalogue(settings.catalogue_file)
        dataset = (getattr(dm, "datasets", {}) or {}).get(split)
        if dataset is not None:
            catalogue.check_targets((ex.target for ex in dataset.examples), str(source))
        max_length = getattr(getattr(dm, "hparams", None), "max_length", 512)
        try:
            self._all_item = AllItemProtocol(
                catalogue,
                self.tokenizer,
                builder,
                max_length,
                top_n=settings.top_n,
                beam_width=settings.beam_width,
                length_penalty=settings.beam_length_penalty,
                free_generation=settings.all_item_free_generation,
                max_new_tokens=settings.max_new_tokens,
                kv_sharing=settings.kv_sharing,
                source=str(source),
            )
        except ValueError as err:  # top_n over the catalogue size, titles with the same tokens
            raise ConfigError(f"eval_protocols all_item: {err}") from None
        log.info(
            "all-item protocol: %d items from %s, top %d, beam width %d",
            len(catalogue),
            settings.catalogue_file,
            settings.top_n,
            self._all_item.beam_width,
        )
        return self._all_item

    def on_predict_epoch_end(self) -> None:
        """Write ``predictions.jsonl`` (the generated / top-ranked answer of every record, see
        :class:`Evaluator`) into ``output_dir`` (default: the run directory)."""
        ev = self.evaluators.pop("predict", None)
        self._all_item = None  # the next run may read other data
        if ev is not None:
            ev.write_prediction_file(self._output_dir(), processes_of(self._trainer))

    def eval_trunk(self) -> TrunkCache | None:
        """The persisted lower-layer cache of ``eval_trunk_dir`` (loaded on first use), or None."""
        directory = self.hparams.scoring.eval_trunk_dir
        if not directory:
            return None
        if self._eval_trunk is None:
            n_lower = frozen_layer_count(self.policy)
            if n_lower == 0:
                raise ValueError(
                    "eval_trunk_dir: the lowest decoder layer has an adapter or is trainable; it "
                    "needs LoRA on the top layers only (lora.layers_to_transform)"
                )
            identity = lower_layers_identity(self.policy, n_lower)
            path = Path(directory) / f"trunk-{n_lower}-{identity[:20]}.pt"
            cache = TrunkCache.load(path, identity, n_lower, self.device)
            log.info("eval trunk cache %s: %d rows on disk", path, len(cache))
            self._eval_trunk = (cache, path, identity)
        return self._eval_trunk[0]

    def _save_eval_trunk(self) -> None:
        trainer = self._trainer  # None outside a Trainer (benchmarks)
        if (
            self._eval_trunk is not None
            and self._eval_trunk[0].builds
            and (trainer is None or trainer.is_global_zero)
        ):
            cache, path, identity = self._eval_trunk
            cache.save(path, identity)
            log.info(
                "eval trunk cache %s: %d rows written (%d new)", path, len(cache), cache.builds
            )
            cache.builds = 0

    def _evaluator(self, split: str, protocols: list[str]) -> Evaluator:
        if split not in self.evaluators:
            self.evaluators[split] = Evaluator(split, protocols).to(self.device)
        return self.evaluators[split]

    def _flush_reference_cache(self) -> None:
        """Write the reference cache's new rows (collective under multi-process training)."""
        if self.ref_cache is not None:
            self.ref_cache.flush(self.reference_source())

    def on_train_epoch_end(self) -> None:
        self._flush_reference_cache()

    def on_validation_epoch_end(self) -> None:
        self._flush_reference_cache()
        ev = self.evaluators.pop("val", None)
        if ev is not None:
            self.log_dict(ev.compute_metrics(), sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self._save_eval_trunk()
        ev = self.evaluators.pop("test", None)
        self._all_item = None  # the next run may read other data
        if ev is None:
            return
        self.log_dict(ev.compute_metrics(), sync_dist=False)
        ev.write_reports(self._output_dir(), self._run_meta(), processes_of(self._trainer))

    def _run_meta(self) -> dict[str, Any]:
        """The run's summary metadata (:meth:`Evaluator.write_reports
        <sdpo_lightning.evaluation.evaluator.Evaluator.write_reports>`): run and method names,
        data set and file, model."""
        h, trainer = self.hparams, self.trainer
        data_file = getattr(getattr(trainer, "datamodule", None), "files", {}).get("test")
        return {
            "run": h.output.run_name or Path(trainer.default_root_dir).name,
            "method": h.output.method or h.objective.name,
            "dataset": Path(data_file).parent.name if data_file else "unknown",
            "data_file": data_file,
            "model": h.source.model_name_or_path or "tiny-llama",
        }

    def _output_dir(self) -> Path:
        if self.hparams.output.output_dir:
            return Path(self.hparams.output.output_dir)
        return Path(self.trainer.default_root_dir)

    # ------------------------------------------------------------------ fit hooks
    def on_fit_start(self) -> None:
        """Open (lazy) or load-or-build (full) the reference cache before any step, for ``reference: cached`` and for
        hard / tempered negatives. The scores never depend on the policy's current weights
        (LoRA: adapter off or the frozen SFT adapter; full fine-tuning: the frozen copy or a
        fresh build from the source), so a resumed run gets the same table."""
        selector = self._selectors.get("train")
        mining = selector is not None and selector.needs_reference
        if (
            self.hparams.objective.needs_reference and self.hparams.scoring.reference == "cached"
        ) or mining:
            self.ref_cache = self._open_reference_cache()

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            root = self.trainer.default_root_dir
            self.export(self.hparams.output.export_dir or os.path.join(root, "export"))

    def export(self, directory: str | os.PathLike) -> Path:
        """Write a peft adapter (LoRA) or a full HF model, plus the tokenizer.

        The directory appears whole or not at all (written aside, sealed with a completion
        marker, then renamed: :mod:`sdpo_lightning.runtime.export_dir`).

        Under DeepSpeed ZeRO-3 the weights are first gathered from the shards, a collective:
        call it on every rank (only global rank 0 writes) — except right after ``fit``, whose
        ``on_train_end`` has already gathered them for ``on_fit_end``.
        """
        from sdpo_lightning.training import strategies

        out = Path(directory)
        weights = self.__dict__.pop("_export_weights", None)
        if weights is None and strategies.is_partitioned(self.policy):
            weights = self._gather_export_weights()
        if self._trainer is not None and not self.trainer.is_global_zero:
            return out
        from sdpo_lightning.runtime.export_dir import atomic_directory, sort_adapter_modules

        kwargs = {"state_dict": weights} if weights else {}
        with atomic_directory(out) as tmp:
            if is_peft(self.policy):
                self.policy.save_pretrained(str(tmp), selected_adapters=["default"], **kwargs)
                sort_adapter_modules(tmp)
            else:
                self.policy.save_pretrained(str(tmp), **kwargs)
            self.tokenizer.save_pretrained(str(tmp))
            emb = hybrid_embedding(self.policy)
            if emb is not None:
                save_projector(emb, self.item_table, tmp / HYBRID_SUBDIR)
        log.info("exported %s to %s", "adapter" if is_peft(self.policy) else "model", out)
        return out

    def _gather_export_weights(self) -> dict[str, torch.Tensor]:
        """What ``export`` writes, gathered from ZeRO-3 shards (collective; rank 0 gets the
        tensors, other ranks ``{}``): the trainable weights of a LoRA policy, else all."""
        from sdpo_lightning.training import strategies

        return strategies.gather_state_dict(self.policy, trainable_only=is_peft(self.policy))

    def on_train_end(self) -> None:
        """ZeRO-3: gather the weights ``on_fit_end`` exports (on rank 0 only) while every rank is
        still here."""
        from sdpo_lightning.training import strategies

        self._flush_reference_cache()
        if strategies.is_partitioned(self.policy):
            self._export_weights = self._gather_export_weights()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable weights, and the hyperparameters as plain data (each group
        a dict of its fields, as in YAML)."""
        checkpoint["state_dict"] = trainable_state_dict(self.policy, prefix="policy.")
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain_hparams(checkpoint["hyper_parameters"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints hold only trainable weights; all of them must be there.

        Also moves an end-of-epoch checkpoint's loop state to the clean start of the next
        epoch: Lightning 2.6 otherwise restores the finished epoch's batch counters into the
        next epoch, which then counts as done at once (a resumed run skipped an epoch).
        """
        _normalize_epoch_end(checkpoint)
        if not checkpoint.get("state_dict"):
            return  # DeepSpeed keeps weights in its own shard files
        expected = set(trainable_state_dict(self.policy, prefix="policy."))
        missing = sorted(expected - set(checkpoint["state_dict"]))
        if missing:
            from sdpo_lightning.errors import CheckpointError

            raise CheckpointError(
                f"checkpoint lacks {len(missing)} trainable weight(s) of this model (e.g. {missing[0]}); "
                "was it written with another LoRA / full fine-tuning setting?"
            )

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        # fused: one ATen kernel whose sqrt is exact; the foreach path's sqrt goes through
        # MKL's vector math, whose last bit differs between CPUs (docs/reproducibility.md)
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        optim: OptimArgs = self.hparams.optim
        opt = torch.optim.AdamW(
            params, lr=optim.learning_rate, weight_decay=optim.weight_decay, fused=fused or None
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm, floor = optim.warmup_steps, optim.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _normalize_epoch_end(checkpoint: dict[str, Any]) -> None:
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not epochs or not batches or not batches.get("is_last_batch"):
        return
    if epochs["current"]["processed"] <= epochs["current"]["completed"]:
        return
    for part in ("total", "current"):
        done = epochs[part]["processed"]
        epochs[part].update(ready=done, started=done, processed=done, completed=done)
    batches["current"] = {k: 0 for k in batches["current"]}
    batches["is_last_batch"] = False


def _hybrid_settings(
    hybrid: HybridSettings | dict | None, init_adapter: str | None
) -> HybridSettings | None:
    """The hybrid settings given, or those of a hybrid ``init_adapter`` (its own item table and
    projector width) when none are given. A hybrid ``init_adapter`` always brings its own item
    table: its projector was trained on those embeddings."""
    if isinstance(hybrid, dict):
        hybrid = HybridSettings(**hybrid)
    saved = Path(init_adapter) / HYBRID_SUBDIR if init_adapter else None
    if hybrid is not None and saved is not None and (saved / "projector.safetensors").is_file():
        if Path(hybrid.item_table).resolve() != saved.resolve():
            log.info(
                "hybrid: item table of %s used (its projector was trained on it), not %s",
                saved,
                hybrid.item_table,
            )
        hybrid = dataclasses.replace(hybrid, item_table=str(saved))
    if hybrid is None and saved is not None and (saved / "projector.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(saved / "projector.safetensors"), framework="pt") as f:
            width = f.get_slice("projector.0.weight").get_shape()[0]
        hybrid = HybridSettings(item_table=str(saved), projector_hidden=int(width))
    return hybrid
