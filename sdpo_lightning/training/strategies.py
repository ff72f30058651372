"""DeepSpeed presets (ZeRO-2, ZeRO-3, ZeRO-3 + CPU offload) and the ZeRO-3 helpers the module uses.

The presets are LightningCLI configs in ``configs/strategy/`` that select
:class:`SDPODeepSpeedStrategy`; combine one with an experiment config::

    sdpo fit -c configs/lastfm/sdpo.yaml -c configs/strategy/zero3.yaml

:class:`CPUDeepSpeedStrategy` runs the same code path on several CPU processes (gloo). It exists
for tests and debugging only: nobody trains a 7B model on CPUs.

How the module builds models under ZeRO-3 (``SDPOModule.configure_model``):

* a base model read from a Hugging Face source is sharded while it loads: Lightning has entered
  ``deepspeed.zero.Init`` and :func:`zero3_hf_config` tells ``transformers`` that ZeRO-3 is on, so
  ``from_pretrained`` fills each shard from the checkpoint (no full copy on any rank);
* LoRA adapters, the tiny in-code model and GGUF files are built whole (:func:`outside_zero_init`,
  :func:`unsharded`) so that peft's and transformers' initialisation, adapter loading and GGUF
  dequantisation see real tensors; the DeepSpeed engine partitions them when it starts;
* the frozen reference copy of full fine-tuning is built like the policy, so it is sharded too.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.strategies.ddp import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

log = logging.getLogger(__name__)

STATE_DICT_KEYS = "sdpo_state_dict_keys"  # checkpoint entry: names of the weights DeepSpeed saved


def _import_deepspeed_quietly() -> None:
    """Import DeepSpeed with its logger writing to stderr. Its import logs the accelerator it
    detected to stdout, and LightningCLI resolving a DeepSpeed strategy's signature imports it:
    ``sdpo fit ... --print_config > run.yaml`` would not be YAML."""
    if "deepspeed" in sys.modules:
        return
    try:
        with contextlib.redirect_stdout(sys.__stderr__ or sys.stderr):
            import deepspeed  # noqa: F401
    except ImportError:  # pragma: no cover - deepspeed is a dependency
        pass


_import_deepspeed_quietly()


class SDPODeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` with the project's defaults.

    Takes every argument of ``lightning.pytorch.strategies.DeepSpeedStrategy`` (``stage``,
    ``offload_optimizer``, ``offload_parameters``, bucket sizes, ...). Differences:

    Args:
        exclude_frozen_parameters: leave frozen weights out of checkpoints (default ``True``): a
            LoRA run's checkpoint holds the adapter and its optimizer state, not the base model,
            which ``configure_model`` rebuilds from its source on resume.
        cpu_adam: with ``offload_optimizer``, replace a ``torch.optim.Adam``/``AdamW`` from
            ``configure_optimizers`` by ``deepspeed.ops.adam.DeepSpeedCPUAdam`` with the same
            hyperparameters (compiled on first use; several times faster on CPU). ``False`` keeps
            the torch optimizer and turns off DeepSpeed's ``zero_force_ds_cpu_optimizer`` check.
        *args, **kwargs: passed to ``DeepSpeedStrategy``.
    """

    strategy_name = "sdpo_deepspeed"

    def __init__(
        self,
        *args: Any,
        exclude_frozen_parameters: bool = True,
        cpu_adam: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        self.cpu_adam = cpu_adam

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        """DeepSpeed writes the weights itself and drops ``state_dict`` from the rest of the
        checkpoint; keep the names of the weights it holds (see :meth:`load_checkpoint`)."""
        checkpoint = {**checkpoint, STATE_DICT_KEYS: sorted(checkpoint.get("state_dict") or {})}
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(
        self, checkpoint_path: Any, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """DeepSpeed restores the weights into the engine; hooks that inspect
        ``checkpoint["state_dict"]`` (``SDPOModule.on_load_checkpoint`` checks that every trainable
        weight is there) get the names of the restored weights, each with an empty tensor."""
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only)
        names = checkpoint.pop(STATE_DICT_KEYS, None)
        if "state_dict" not in checkpoint and names is not None:
            checkpoint["state_dict"] = {name: torch.empty(0) for name in names}
        return checkpoint

    def _auto_select_batch_size(self) -> int:
        # DeepSpeed's train_micro_batch_size_per_gpu (throughput logging only) is read from the
        # train loader; validate / test / predict have none (the data module only sets up theirs)
        trainer = self.lightning_module.trainer if self.lightning_module is not None else None
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return 1
        return super()._auto_select_batch_size()

    @property
    def offloads_optimizer(self) -> bool:
        """Whether the ZeRO optimizer state lives on the CPU (or NVMe)."""
        zero = (self.config or {}).get("zero_optimization") or {}
        return (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)

    def _setup_model_and_optimizer(
        self, model: nn.Module, optimizer: Any, lr_scheduler: Any = None
    ) -> Any:
        if optimizer is not None and self.offloads_optimizer:
            new = _cpu_adam_like(optimizer) if self.cpu_adam else None
            if new is None:
                self.config["zero_force_ds_cpu_optimizer"] = False
            else:
                if lr_scheduler is not None:
                    _rebind_scheduler(lr_scheduler, new)
                optimizer = new
        return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)


def _cpu_adam_like(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer | None:
    """``DeepSpeedCPUAdam`` with ``optimizer``'s parameter groups, or ``None`` if unavailable."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return None
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        d = optimizer.defaults
        new = DeepSpeedCPUAdam(
            optimizer.param_groups,
            lr=d["lr"],
            betas=d["betas"],
            eps=d["eps"],
            weight_decay=d["weight_decay"],
            adamw_mode=isinstance(optimizer, torch.optim.AdamW),
        )
    except Exception as err:  # op not buildable here: keep the torch optimizer
        name = type(optimizer).__name__
        log.warning(
            "DeepSpeedCPUAdam unavailable (%s); keeping %s for the offloaded optimizer", err, name
        )
        return None
    log.info("optimizer offload: %s replaced by DeepSpeedCPUAdam", type(optimizer).__name__)
    return new


def _rebind_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Point an LR scheduler at a replacement optimizer (same parameter groups), with the
    step-tracking wrapper torch's schedulers put on ``optimizer.step``."""
    scheduler.optimizer = optimizer
    step = optimizer.step

    @functools.wraps(step)
    def tracked_step(*args: Any, **kwargs: Any) -> Any:
        optimizer._opt_called = True  # type: ignore[attr-defined]
        return step(*args, **kwargs)

    tracked_step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = tracked_step  # type: ignore[method-assign]


class CPUDeepSpeedStrategy(SDPODeepSpeedStrategy):
    """Test / debug only: :class:`SDPODeepSpeedStrategy` on CPU processes.

    Lightning's ``DeepSpeedStrategy`` refuses non-CUDA accelerators and expects device indices
    equal to the local ranks. This subclass skips the CUDA check, gives the CPU devices the
    indices ``cpu:0..n-1`` and uses the gloo backend. DeepSpeed must use its CPU accelerator:
    set ``DS_ACCELERATOR=cpu`` (done here unless already set) before DeepSpeed is imported.
    Use with ``trainer.accelerator: cpu`` and ``trainer.devices: N``.

    Args:
        cpu_adam: see :class:`SDPODeepSpeedStrategy`; off here so that nothing is compiled.
        shm_comm: let DeepSpeed build its shared-memory collective op for CPUs (a C++ extension
            compiled on first use, about 1.5 minutes); off: plain gloo collectives.
        *args, **kwargs: passed to :class:`SDPODeepSpeedStrategy`.
    """

    strategy_name = "cpu_deepspeed"

    def __init__(
        self, *args: Any, cpu_adam: bool = False, shm_comm: bool = False, **kwargs: Any
    ) -> None:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(*args, cpu_adam=cpu_adam, **kwargs)
        self.shm_comm = shm_comm

    def _init_deepspeed_distributed(self) -> None:
        if not self.shm_comm:  # (``deepspeed.comm.torch`` the attribute is torch itself)
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        super()._init_deepspeed_distributed()

    def setup_environment(self) -> None:
        if not isinstance(self.accelerator, CPUAccelerator):
            raise RuntimeError(
                f"CPUDeepSpeedStrategy needs `accelerator: cpu`, got {type(self.accelerator).__name__}"
            )
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's CUDA-only check

    def setup_distributed(self) -> None:
        assert self.parallel_devices is not None
        self.parallel_devices = [torch.device("cpu", i) for i in range(len(self.parallel_devices))]
        super().setup_distributed()


# ---------------------------------------------------------------------- ZeRO-3 helpers
def zero3_config(trainer: Any) -> dict[str, Any] | None:
    """The DeepSpeed config if ``trainer`` runs DeepSpeed ZeRO stage 3, else ``None``."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    if not isinstance(strategy, DeepSpeedStrategy) or not strategy.zero_stage_3:
        return None
    strategy._init_config_if_needed()
    return strategy.config


def zero3_hf_config(config: dict[str, Any]) -> Any:
    """Tell ``transformers`` that ZeRO-3 is on (``from_pretrained`` then loads into shards and
    ``generate`` keeps the ranks in step). Keep the returned object alive: transformers holds
    only a weak reference."""
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(config)


@contextlib.contextmanager
def outside_zero_init() -> Iterator[None]:
    """Suspend an active ``deepspeed.zero.Init`` (modules built inside are whole, not sharded;
    the DeepSpeed engine partitions them when it starts). A no-op when none is active."""
    try:
        from deepspeed.runtime.zero import partition_parameters as pp
    except ImportError:  # pragma: no cover - deepspeed is a dependency
        yield
        return
    if not (pp.zero_init_context and pp.top_level_context is not None):
        yield
        return
    pp.shutdown_init_context()
    try:
        yield
    finally:
        pp.restore_init_context()


def import_model_class(model_name_or_path: str, trust_remote_code: bool = False) -> None:
    """Import the modelling code of a Hugging Face causal LM outside ``deepspeed.zero.Init``.

    ``zero.Init`` replaces ``nn.Module.__init_subclass__``: a class *defined* while it is active
    gets ``_old_init = __init__`` and a partitioning ``__init__`` before the class decorators
    run. transformers >= 5.25 decorates attention classes (``@use_kernelized_func``, from the
    ``kernels`` package) with an ``__init__`` that sets ``_kernel_funcs``, which their
    ``forward`` reads. When ``zero.Init`` is suspended or exits, DeepSpeed puts ``_old_init``
    back, i.e. the undecorated one, so every later instance lacks ``_kernel_funcs``
    (``AttributeError: 'LlamaAttention' object has no attribute '_kernel_funcs'``, e.g. in the
    frozen reference of full fine-tuning, built after :func:`outside_zero_init`). Importing the
    class first, with ``zero.Init`` suspended, lets DeepSpeed wrap the decorated ``__init__``.

    Args:
        model_name_or_path: HF directory or hub id (its ``config.json`` names the architecture).
        trust_remote_code: as for ``from_pretrained``; custom code on the hub is not imported
            here (transformers loads it at ``from_pretrained``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    with outside_zero_init():
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        mapping = AutoModelForCausalLM._model_mapping
        if type(config) in mapping:
            mapping[type(config)]  # the lazy mapping imports the modelling module here


@contextlib.contextmanager
def unsharded() -> Iterator[None]:
    """Build whole models even under ZeRO-3: suspends ``zero.Init`` and transformers' ZeRO-3
    flag, e.g. for a temporary model the DeepSpeed engine does not manage (a model sharded
    outside the engine has empty weights: nothing gathers them in its forward)."""
    from transformers.integrations import deepspeed as hf_ds

    ref = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
    config = ref() if ref is not None else None
    if config is not None:
        hf_ds.unset_hf_deepspeed_config()
    try:
        with outside_zero_init():
            yield
    finally:
        if config is not None:
            hf_ds.set_hf_deepspeed_config(config)


def is_partitioned(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a ZeRO-3 partitioned parameter."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_state_dict(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Full CPU copies of ``model``'s parameters (names as in ``named_parameters``), gathered
    module by module from ZeRO-3 shards, so no rank ever holds more than one module in full.

    A collective under ZeRO-3: every rank must call it. Rank 0 gets the tensors, the others
    an empty dict. Works unchanged on unpartitioned models.
    """
    import deepspeed

    rank0 = _rank() == 0
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        params = []
        for name, p in mod.named_parameters(recurse=False):
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            params.append((f"{mod_name}.{name}" if mod_name else name, p))
        if not params:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if rank0:
                for name, p in params:
                    out[name] = p.detach().to("cpu", copy=True)
    return out
