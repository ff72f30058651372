"""DeepSpeed ZeRO-2 / ZeRO-3 on two CPU processes (gloo, DeepSpeed's CPU accelerator).

Every run is a real ``sdpo fit`` in a subprocess; with ``devices: 2`` Lightning's launcher starts
the second rank. The baseline is one process without DeepSpeed on the same global batch
(``batch_size`` 4 against 2 per rank).

Same data order: the data module's training sampler is a ``DistributedSampler`` seeded by
``data.seed`` for any number of processes: ``randperm(n, seed + epoch)`` and rank ``r`` takes
``perm[r::2]``, so the global batch of step ``s`` is ``perm[4s:4s+4]``, the batch the single
process draws. Negatives depend only on (seed, epoch, example index). The probe records the
example indices of every global batch, and the tests check them before comparing losses.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from sdpo_lightning.training.module_args import grouped_kwargs
from tests.conftest import REPO, TINY

STRATEGY = "sdpo_lightning.training.strategies.CPUDeepSpeedStrategy"
PROBE = "tests.integration.test_deepspeed_cpu.LossProbe"
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
N_TRAIN, N_VAL, GLOBAL_BATCH = 8, 4, 4  # 2 steps per epoch


class LossProbe(Callback):
    """Records, on every rank, the rank-averaged training loss and chosen log-prob of each step,
    the validation loss of each epoch, and how the weights are partitioned when training
    starts; rank 0 writes them to ``<default_root_dir>/probe.json`` at the end of ``fit``."""

    def __init__(self) -> None:
        self.train: list[list[float]] = []
        self.batches: list[list[int]] = []  # example indices of each global batch
        self.val: list[float] = []
        self.layout: dict[str, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        import deepspeed

        for part in ("policy", "reference_model"):
            module = getattr(pl_module, part)
            if module is None:
                continue
            params = list(module.parameters())
            self.layout[part] = {
                "partitioned": sum(hasattr(p, "ds_id") for p in params),
                "params": len(params),
                "local_numel": sum(
                    p.ds_tensor.numel() if hasattr(p, "ds_id") else p.numel() for p in params
                ),
                "full_numel": sum(p.ds_numel if hasattr(p, "ds_id") else p.numel() for p in params),
            }
        lora_b = [p for n, p in pl_module.policy.named_parameters() if "lora_B" in n]
        with deepspeed.zero.GatheredParameters(lora_b, modifier_rank=None):
            self.layout["lora_B_absmax"] = max((p.abs().max().item() for p in lora_b), default=0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        m = trainer.callback_metrics
        values = torch.stack(
            [m["train/loss"].detach().float(), m["train/logps/chosen"].detach().float()]
        )
        self.train.append(trainer.strategy.reduce(values, reduce_op="mean").tolist())
        self.batches.append(sorted(trainer.strategy.all_gather(batch["index"]).flatten().tolist()))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val.append(float(trainer.callback_metrics["val/loss"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            out = {
                "train": self.train,
                "batches": self.batches,
                "val": self.val,
                "layout": self.layout,
                "world": trainer.world_size,
            }
            Path(trainer.default_root_dir, "probe.json").write_text(json.dumps(out))


# ---------------------------------------------------------------------- fixtures and runs
@pytest.fixture(scope="module")
def ds_inputs(synthetic_dir, tmp_path_factory) -> Path:
    """A tiny LLaMA saved as a HF directory (the ZeRO-3 code path loads it shard by shard, as it
    would a 7B model) and short train / validation files."""
    from sdpo_lightning.modeling.models import build_policy, load_tokenizer

    root = tmp_path_factory.mktemp("ds_inputs")
    tok = load_tokenizer(None, tokenizer_path=str(synthetic_dir / "tokenizer"))
    build_policy(None, tok, tiny_config=TINY, init_seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    for name, n in (("train", N_TRAIN), ("valid", N_VAL)):
        rows = json.loads((synthetic_dir / f"{name}.json").read_text())[:n]
        (root / f"{name}.json").write_text(json.dumps(rows))
    return root


def _config(
    inputs: Path,
    root: Path,
    stage: int | None,
    devices: int,
    lora: dict | None = LORA,
    model: dict | None = None,
    **trainer,
) -> Path:
    """A run's config; ``stage=None``: no DeepSpeed (Lightning's default single-device strategy)."""
    strategy = (
        {"strategy": {"class_path": STRATEGY, "init_args": {"stage": stage}}} if stage else {}
    )
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": devices,
            "num_nodes": 1,
            **strategy,
            "precision": "32-true",
            "max_epochs": 2,
            "log_every_n_steps": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "callbacks": [
                {"class_path": PROBE},
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(root / "checkpoints"),
                        "filename": "epoch{epoch}",
                        "auto_insert_metric_name": False,
                        "every_n_epochs": 1,
                        "save_top_k": -1,
                    },
                },
            ],
            **trainer,
        },
        "model": grouped_kwargs(
            {  # model: overrides by field name
                "model_name_or_path": str(inputs / "base"),
                "lora": lora,
                "objective": "sdpo",
                "beta": 1.0,
                "num_negatives": 3,
                "learning_rate": 1e-2,
                "reference": "live",
                **(model or {}),
            }
        ),
        "data": {
            "train_file": str(inputs / "train.json"),
            "val_file": str(inputs / "valid.json"),
            "batch_size": GLOBAL_BATCH // devices,
            "eval_batch_size": 2,
            "max_length": 256,
            "seed": 0,
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.in.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _sdpo(subcommand: str, config: Path, *extra: str, timeout: int = 900) -> None:
    """``sdpo <subcommand> -c config`` in a subprocess (Lightning launches the other ranks)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sdpo_lightning", subcommand, "-c", str(config), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-6000:])


def _fit(config: Path, *extra: str) -> dict[str, Any]:
    """``sdpo fit``; the probe's record."""
    start = time.perf_counter()
    _sdpo("fit", config, *extra)
    root = Path(yaml.safe_load(config.read_text())["trainer"]["default_root_dir"])
    probe = json.loads((root / "probe.json").read_text())
    probe["seconds"] = time.perf_counter() - start
    return probe


@pytest.fixture(scope="module")
def runs(ds_inputs, tmp_path_factory):
    """Runs made on first use and shared by the tests of this module."""
    base = tmp_path_factory.mktemp("ds_runs")
    done: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in done:
            stage, devices = {"zero2": (2, 2), "zero3": (3, 2), "single": (None, 1)}[name]
            done[name] = _fit(_config(ds_inputs, base / name, stage, devices))
            done[name]["root"] = base / name
        return done[name]

    get.base = base  # type: ignore[attr-defined]
    return get


def _close(a: list, b: list, atol: float = 2e-5) -> None:
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=atol)


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


# ---------------------------------------------------------------------- tests
STRATEGY_CONFIGS = sorted((REPO / "configs" / "strategy").glob("*.yaml"))
SCALE_CONFIGS = sorted((REPO / "configs").rglob("*_zero3.yaml"))
EXPECTED = {
    "zero2": (2, False, False),
    "zero3": (3, False, False),
    "zero3_offload": (3, True, True),
}


def _deepspeed_config(printed: dict) -> dict:
    """Instantiate the printed strategy and complete its DeepSpeed config the way the strategy
    does at setup (batch size, accumulation, clipping, precision); DeepSpeed parses it."""
    import importlib

    from deepspeed.runtime.config import DeepSpeedConfig
    from lightning.fabric.strategies.deepspeed import _format_precision_config

    spec = printed["trainer"]["strategy"]
    module, _, name = spec["class_path"].rpartition(".")
    args = {k: v for k, v in spec["init_args"].items() if v is not None and k != "timeout"}
    config = dict(getattr(importlib.import_module(module), name)(**args).config)
    config.update(
        train_micro_batch_size_per_gpu=printed["data"]["batch_size"],
        gradient_accumulation_steps=printed["trainer"]["accumulate_grad_batches"],
        gradient_clipping=printed["trainer"]["gradient_clip_val"],
    )
    _format_precision_config(
        config=config,
        precision=printed["trainer"]["precision"],
        loss_scale=0,
        loss_scale_window=1000,
        min_loss_scale=1,
        initial_scale_power=16,
        hysteresis=2,
    )
    DeepSpeedConfig(config)  # raises on an invalid configuration
    return config


def _print_config(capsys, *configs: Path) -> dict:
    from sdpo_lightning.cli import cli_main

    args = [a for c in configs for a in ("-c", str(c))]
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", *args, "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", STRATEGY_CONFIGS, ids=[p.stem for p in STRATEGY_CONFIGS])
def test_strategy_config_prints_a_valid_deepspeed_config(path, capsys):
    assert path.stem in EXPECTED
    printed = _print_config(capsys, REPO / "configs" / "lastfm" / "sdpo.yaml", path)
    assert (
        printed["trainer"]["strategy"]["class_path"]
        == "sdpo_lightning.training.strategies.SDPODeepSpeedStrategy"
    )
    assert (
        printed["trainer"]["precision"] == "bf16-mixed"
        and printed["model"]["source"]["gradient_checkpointing"] is True
    )
    config = _deepspeed_config(printed)
    stage, offload_opt, offload_param = EXPECTED[path.stem]
    zero = config["zero_optimization"]
    assert zero["stage"] == stage and config["bf16"] == {"enabled": True}
    assert ("offload_optimizer" in zero) == offload_opt and (
        "offload_param" in zero
    ) == offload_param
    assert printed["model"]["objective"]["name"] == "sdpo"  # the experiment config is kept


@pytest.mark.parametrize("path", SCALE_CONFIGS, ids=[p.stem for p in SCALE_CONFIGS])
def test_7b_config_prints_a_valid_deepspeed_config(path, capsys):
    printed = _print_config(capsys, path)
    assert printed["model"]["source"]["model_name_or_path"] == "meta-llama/Llama-2-7b-hf"
    assert printed["model"]["source"]["gradient_checkpointing"] is True
    assert printed["model"]["lora"] or printed["model"]["source"]["init_adapter"]
    assert _deepspeed_config(printed)["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("stage", [2, 3])
def test_two_processes_match_one_process(runs, stage):
    two, one = runs(f"zero{stage}"), runs("single")
    assert two["world"] == 2 and one["world"] == 1
    assert two["batches"] == one["batches"], (
        "the global batches differ: data order depends on world size"
    )
    assert len(two["train"]) == 2 * N_TRAIN // GLOBAL_BATCH
    assert two["train"][0][0] == pytest.approx(
        math.log(4), abs=1e-5
    )  # starts at the reference: log(1+K)
    _close(
        two["train"], one["train"]
    )  # per step, over the global batch: [S-DPO loss, logps/chosen]
    _close(two["val"], one["val"])  # after each epoch
    assert two["train"][-1][0] < two["train"][0][0]  # it learns
    a, b = _adapter(two["root"] / "export"), _adapter(one["root"] / "export")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)


def test_zero3_shards_policy_and_lora(runs):
    """ZeRO-3 partitions every weight (the base while it loads, LoRA when the engine starts);
    LoRA B still starts at zero; the LoRA reference is the adapter-disabled policy."""
    layout = runs("zero3")["layout"]
    policy = layout["policy"]
    assert policy["partitioned"] == policy["params"]
    assert (
        policy["local_numel"] <= policy["full_numel"] // 2 + policy["params"]
    )  # half each (+ padding)
    assert "reference_model" not in layout
    assert layout["lora_B_absmax"] == 0.0
    assert runs("zero2")["layout"]["policy"]["partitioned"] == 0


def test_zero3_save_resume_continue(runs, ds_inputs):
    """Resume the two-process ZeRO-3 run from its epoch-0 checkpoint: epoch 1 repeats exactly."""
    full = runs("zero3")
    ckpt = full["root"] / "checkpoints" / "epoch0.ckpt"
    saved = sorted(p.name for p in (ckpt / "checkpoint").iterdir())
    assert saved == [
        f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt"
        for r in (0, 1)
        for kind in ("model", "optim")
    ]
    states = torch.load(
        ckpt / "checkpoint" / "zero_pp_rank_0_mp_rank_00_model_states.pt",
        map_location="cpu",
        weights_only=False,
    )
    # frozen base weights are left out: the checkpoint holds the adapter and its optimizer state
    saved_params = [k for shapes in states["param_shapes"] for k in shapes]
    assert saved_params and all("lora_" in k for k in saved_params)
    assert set(states["module"]) <= {
        *saved_params,
        *states["buffer_names"],
        *states["shared_params"],
    }  # tied lm_head

    root = runs.base / "zero3_resumed"
    resumed = _fit(_config(ds_inputs, root, 3, 2), "--ckpt_path", str(ckpt))
    steps = N_TRAIN // GLOBAL_BATCH
    assert resumed["batches"] == full["batches"][steps:]
    _close(resumed["train"], full["train"][steps:])
    _close(resumed["val"], full["val"][1:])
    a, b = _adapter(root / "export"), _adapter(full["root"] / "export")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def _validate(inputs: Path, lora: dict | None, load_policy) -> float:
    """Validation S-DPO loss (reference: the base model) of the policy ``load_policy`` sets, in
    this process, without DeepSpeed."""
    from lightning.pytorch import Trainer

    from sdpo_lightning.data.datamodule import RecDataModule
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import ModelArgs, ObjectiveArgs

    module = SDPOModule(
        source=ModelArgs(model_name_or_path=str(inputs / "base")),
        lora=lora,
        objective=ObjectiveArgs(name="sdpo", num_negatives=3),
    )
    module.configure_model()
    load_policy(module.policy)
    dm = RecDataModule(
        val_file=str(inputs / "valid.json"), num_negatives=3, eval_batch_size=2, max_length=256
    )
    dm.connect(module.tokenizer, module.item_table)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    return metrics["val/loss"]


def test_zero3_exported_adapter_scores_like_the_trained_model(runs, ds_inputs):
    """The adapter gathered from the ZeRO-3 shards gives the validation loss the sharded model
    computed after its last step, and peft loads the directory."""
    from peft import PeftModel, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    run = runs("zero3")
    export = run["root"] / "export"
    weights = _adapter(export)
    assert (
        weights and all("lora_" in k for k in weights) and all(v.numel() for v in weights.values())
    )
    assert _validate(
        ds_inputs, LORA, lambda policy: set_peft_model_state_dict(policy, weights)
    ) == pytest.approx(run["val"][-1], abs=2e-5)

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(ds_inputs / "base"), export
    )
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    base = AutoModelForCausalLM.from_pretrained(ds_inputs / "base")
    with torch.no_grad():
        assert not torch.allclose(
            model(ids).logits, base(ids).logits, atol=1e-4
        )  # the adapter is applied


def test_zero3_test_stage_matches_one_process(runs, ds_inputs):
    """``sdpo test`` under ZeRO-3 on two processes (greedy generation with the ranks in step,
    ranking, predictions gathered) gives one process's predictions and metrics."""
    from sdpo_lightning.cli import cli_main

    model = {
        "init_adapter": str(runs("zero3")["root"] / "export"),
        "max_new_tokens": 6,
        "eval_protocols": ["generation", "ranking"],
    }
    out = {}
    for name, stage, devices in (("test_zero3", 3, 2), ("test_single", None, 1)):
        config = _config(ds_inputs, runs.base / name, stage, devices, lora=None, model=model)
        cfg = yaml.safe_load(config.read_text())
        cfg["data"]["test_file"] = cfg["data"]["val_file"]
        cfg["trainer"]["callbacks"] = []
        config.write_text(yaml.safe_dump(cfg))
        _sdpo("test", config) if stage else cli_main(["test", "-c", str(config)])
        root = runs.base / name
        preds = [json.loads(line) for line in (root / "predictions.jsonl").open()]
        out[name] = (
            json.loads((root / "summary.json").read_text()),
            sorted(preds, key=lambda p: p["index"]),
        )
    (s2, p2), (s1, p1) = out["test_zero3"], out["test_single"]
    assert s2["n_examples"] == s1["n_examples"] == N_VAL
    assert [p["generated"] for p in p2] == [p["generated"] for p in p1]
    for name, metric in s1["protocols"]["ranking"].items():
        assert s2["protocols"]["ranking"][name]["value"] == pytest.approx(
            metric["value"], abs=1e-6
        ), name


def test_zero3_full_finetuning_shards_reference_and_exports_model(runs, ds_inputs):
    """Full fine-tuning (with gradient checkpointing): the frozen reference copy is sharded like
    the policy (not replicated); the exported model, gathered from the shards, loads with
    transformers and scores like the trained one."""
    from transformers import AutoModelForCausalLM

    root = runs.base / "zero3_full"
    run = _fit(
        _config(
            ds_inputs, root, 3, 2, lora=None, model={"gradient_checkpointing": True}, max_epochs=1
        )
    )
    for part in ("policy", "reference_model"):
        lay = run["layout"][part]
        assert lay["partitioned"] == lay["params"], part
        assert lay["local_numel"] <= lay["full_numel"] // 2 + lay["params"], part
    state = AutoModelForCausalLM.from_pretrained(root / "export").state_dict()
    original = AutoModelForCausalLM.from_pretrained(ds_inputs / "base").state_dict()
    assert state.keys() == original.keys()
    assert any(not torch.equal(state[k], original[k]) for k in state)  # it trained
    assert _validate(
        ds_inputs, None, lambda policy: policy.load_state_dict(state)
    ) == pytest.approx(run["val"][-1], abs=2e-5)


def test_zero3_stage2_from_sft_adapter_with_cached_reference(runs, ds_inputs):
    """The shipped stage-2 setting: continue from an adapter, which (frozen) is the reference,
    with the reference log-probs cached once (each rank scores a share, then all-gather)."""
    adapter = runs("zero3")["root"] / "export"
    model = {"init_adapter": str(adapter), "reference": "cached"}
    two = _fit(
        _config(ds_inputs, runs.base / "stage2_zero3", 3, 2, lora=None, model=model, max_epochs=1)
    )
    one = _fit(
        _config(
            ds_inputs, runs.base / "stage2_single", None, 1, lora=None, model=model, max_epochs=1
        )
    )
    assert two["batches"] == one["batches"]
    assert two["train"][0][0] == pytest.approx(math.log(4), abs=1e-5)  # starts at the reference
    _close(two["train"], one["train"])
    _close(two["val"], one["val"])
    caches = [
        sorted((runs.base / r / "reference_cache").glob("*.pt"))
        for r in ("stage2_zero3", "stage2_single")
    ]
    assert [p.name for p in caches[0]] == [p.name for p in caches[1]] and caches[0]
    for a, b in zip(*caches, strict=False):
        torch.testing.assert_close(
            torch.load(a)["scores"], torch.load(b)["scores"], rtol=0, atol=1e-4
        )


def test_zero3_bf16_mixed_with_checkpointing_like_the_7b_configs(runs, ds_inputs):
    """The 7B configs' switches (bf16-mixed, bf16 weights, gradient checkpointing) under ZeRO-3:
    it trains, close to the fp32 run, and exports an adapter."""
    root = runs.base / "zero3_bf16"
    model = {"dtype": "bfloat16", "gradient_checkpointing": True}
    run = _fit(_config(ds_inputs, root, 3, 2, model=model, precision="bf16-mixed", max_epochs=1))
    fp32 = runs("zero3")
    assert run["batches"] == fp32["batches"][: len(run["batches"])]
    assert run["train"][0][0] == pytest.approx(
        math.log(4), abs=1e-6
    )  # policy == reference at start
    losses = [loss for loss, _ in run["train"]]
    _close(losses, [loss for loss, _ in fp32["train"][: len(losses)]], atol=2e-2)
    assert (root / "export" / "adapter_model.safetensors").is_file()
