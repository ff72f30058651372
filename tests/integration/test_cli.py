"""The ``sdpo`` CLI end to end on tiny data: SFT → S-DPO from its adapter → test; resume;
reproducibility; every shipped config parses."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sdpo_lightning.cli import cli_main
from sdpo_lightning.training.module_args import GROUPS
from tests.conftest import REPO
from tests.conftest import tiny_config as _config


def _metrics(root: Path) -> list[dict]:
    import csv

    (path,) = sorted(root.glob("csv/version_*/metrics.csv"))[-1:]
    return list(csv.DictReader(path.open()))


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out


def test_sft_then_sdpo_then_test(tmp_path, synthetic_dir):
    sft = _config(tmp_path, synthetic_dir, "sft", objective="sft")
    cli_main(["fit", "-c", str(sft)])
    adapter = tmp_path / "sft" / "export"
    assert (adapter / "adapter_config.json").is_file()
    assert (tmp_path / "sft" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "sft" / "csv" / "version_0" / "config.yaml").is_file()
    assert list((tmp_path / "sft" / "tb").rglob("events.out.tfevents*"))
    rows = _metrics(tmp_path / "sft")
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/loss") for r in rows)

    sdpo = _config(
        tmp_path, synthetic_dir, "sdpo", objective="sdpo", init_adapter=str(adapter), beta=0.5
    )
    cli_main(["fit", "-c", str(sdpo)])
    rows = _metrics(tmp_path / "sdpo")
    for key in (
        "train/loss",
        "train/rewards/chosen",
        "train/rewards/rejected",
        "train/rewards/margins",
        "train/rewards/accuracies",
        "train/logps/chosen",
        "train/logps/rejected",
        "val/loss",
        "val/rewards/margins",
    ):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and all(torch.isfinite(torch.tensor(values))), key
    # the first S-DPO step starts at the reference (= SFT model): rewards are exactly 0
    first = next(r for r in rows if r.get("train/rewards/chosen"))
    assert float(first["train/rewards/chosen"]) == pytest.approx(0.0, abs=1e-5)
    assert float(first["train/loss"]) == pytest.approx(
        torch.log(torch.tensor(4.0)).item(), abs=1e-4
    )  # log(1+K)

    ckpt = torch.load(
        tmp_path / "sdpo" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["state_dict"] and all("lora_" in k and ".default." in k for k in ckpt["state_dict"])

    cli_main(
        ["test", "-c", str(sdpo), "--model.source.init_adapter", str(tmp_path / "sdpo" / "export")]
    )
    summary = json.loads((tmp_path / "sdpo" / "summary.json").read_text())
    preds = [json.loads(line) for line in (tmp_path / "sdpo" / "predictions.jsonl").open()]
    assert len(preds) == 8 == summary["n_examples"]
    gen = summary["protocols"]["generation"]
    assert gen["hr@1"]["value"] == pytest.approx(sum(p["correct"] for p in preds) / 8)
    assert gen["valid_ratio"]["value"] == pytest.approx(sum(p["valid"] for p in preds) / 8)
    assert {"index", "generated", "parsed", "target", "correct", "target_rank"} <= set(preds[0])


def _adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_killed_fit_resumes_to_the_same_adapter(tmp_path, synthetic_dir):
    """Epochs of 3 steps; one run is killed hard in its third epoch (step 7) and resumed from `last`."""
    common = [
        "--trainer.max_steps",
        "9",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.max_epochs",
        "3",
        "--trainer.val_check_interval",
        "1.0",
    ]
    full = _config(tmp_path, synthetic_dir, "full", objective="sdpo")
    cli_main(["fit", "-c", str(full), *common])

    crash = _config(tmp_path, synthetic_dir, "crash", objective="sdpo")
    cmd = [
        sys.executable,
        "-m",
        "sdpo_lightning",
        "fit",
        "-c",
        str(crash),
        *common,
        "--trainer.callbacks+=tests.integration.kill_callback.KillAtStep",
        "--trainer.callbacks.step=7",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-3000:]
    assert not (tmp_path / "crash" / "export").exists()
    cli_main(["fit", "-c", str(crash), *common, "--ckpt_path", "last"])

    a, b = (
        _adapter_weights(tmp_path / "full" / "export"),
        _adapter_weights(tmp_path / "crash" / "export"),
    )
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_ckpt_hparams_replacing_the_config_are_named(tmp_path, synthetic_dir, caplog):
    """LightningCLI applies ``--ckpt_path``'s stored model arguments over the config: the CLI
    warns, naming each replaced setting; without the stored arguments the config's model
    resumes the weights and optimizer (S-DPO from an SFT checkpoint, the study's SWITCH runs)."""
    sft = _config(tmp_path, synthetic_dir, "sft", objective="sft")
    cli_main(["fit", "-c", str(sft), "--trainer.max_steps", "2"])
    ckpt = tmp_path / "sft" / "checkpoints" / "last.ckpt"
    sdpo = _config(
        tmp_path,
        synthetic_dir,
        "sdpo",
        objective="sdpo",
        init_adapter=str(tmp_path / "sft" / "export"),
    )
    with caplog.at_level(logging.WARNING, logger="sdpo_lightning.cli"):
        cli_main(["fit", "-c", str(sdpo), "--ckpt_path", str(ckpt), "--trainer.max_steps", "2"])
    assert str(ckpt) in caplog.text and "model.objective.name: 'sdpo' -> 'sft'" in caplog.text
    assert f"model.source.init_adapter: '{tmp_path / 'sft' / 'export'}' -> None" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdpo_lightning.cli"):  # same settings: silent
        cli_main(["fit", "-c", str(sft), "--ckpt_path", str(ckpt), "--trainer.max_steps", "3"])
    assert "replace this config" not in caplog.text

    # checkpoints of earlier versions hold the arguments flat (model.beta): they are regrouped
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain data only
    grouped = state["hyper_parameters"]
    assert grouped["objective"]["name"] == "sft" and isinstance(grouped["lora"], dict)
    old_name = {("objective", "name"): "objective", ("scoring", "mode"): "scoring"}
    flat = {old_name.get((g, k), k): v for g in GROUPS for k, v in grouped[g].items()}
    state["hyper_parameters"] = {**flat, "lora": grouped["lora"], "hybrid": None}
    torch.save(state, tmp_path / "flat.ckpt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdpo_lightning.cli"):
        cli_main(["test", "-c", str(sft), "--ckpt_path", str(tmp_path / "flat.ckpt")])
    assert "replace this config" not in caplog.text  # the same settings, regrouped
    assert (tmp_path / "sft" / "summary.json").is_file()

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state.pop("hyper_parameters")
    torch.save(state, tmp_path / "state.ckpt")
    switched = _config(
        tmp_path,
        synthetic_dir,
        "switched",
        objective="sdpo",
        init_adapter=str(tmp_path / "sft" / "export"),
    )
    cli_main(
        [
            "fit",
            "-c",
            str(switched),
            "--ckpt_path",
            str(tmp_path / "state.ckpt"),
            "--trainer.max_steps",
            "4",
            "--trainer.log_every_n_steps",
            "1",
        ]
    )
    rows = [r for r in _metrics(tmp_path / "switched") if r.get("train/rewards/chosen")]
    assert (
        int(rows[0]["step"]) == state["global_step"]
    )  # resumed after the SFT's steps, now under S-DPO:
    assert float(rows[0]["train/loss"]) == pytest.approx(
        math.log(4.0), abs=1e-4
    )  # policy = reference


def test_same_config_and_seed_same_metrics(tmp_path, synthetic_dir):
    """Two runs of one config and seed log the same losses at the same steps (to float
    rounding: CPU kernels may sum in another order under another thread schedule)."""
    results = []
    for name in ("one", "two"):
        cfg = _config(tmp_path, synthetic_dir, name, objective="sdpo")
        cli_main(["fit", "-c", str(cfg)])
        rows = _metrics(tmp_path / name)
        results.append(
            {
                (r["step"], k): float(r[k])
                for r in rows
                for k in ("train/loss", "val/loss")
                if r.get(k)
            }
        )
    assert results[0].keys() == results[1].keys() and len(results[0]) >= 5
    for key, value in results[0].items():
        assert results[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


#: ``sdpo`` configs; ``configs/baselines`` belong to ``sdpo-baseline`` and ``*_data.yaml`` to
#: the synthetic generator (both parsed by their own tests below)
CONFIGS = sorted(
    p
    for p in (REPO / "configs").rglob("*.yaml")
    if not {"strategy", "baselines"} & set(p.parts) and not p.name.endswith("_data.yaml")
)
BASELINE_CONFIGS = sorted((REPO / "configs" / "baselines").glob("*.yaml"))
DATA_CONFIGS = sorted((REPO / "configs").glob("*_data.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_shipped_config_parses(path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "-c", str(path), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["objective"]["name"] in ("sft", "dpo", "dpo_k", "sdpo")
    assert printed["model"]["objective"]["num_negatives"] >= 1
    assert "num_negatives" not in printed["data"]  # linked from model.objective.num_negatives


@pytest.mark.parametrize("path", BASELINE_CONFIGS, ids=[p.name for p in BASELINE_CONFIGS])
def test_shipped_baseline_config_parses(path, capsys):
    from sdpo_lightning.baselines.seqrec_cli import seqrec_main

    with pytest.raises(SystemExit) as exc:
        seqrec_main(["fit", "-c", str(path), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].split(".")[-1] in ("GRU4Rec", "Caser", "SASRec", "MoRec")


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=[p.name for p in DATA_CONFIGS])
def test_shipped_generator_config_parses(path):
    from sdpo_lightning.data.synthetic import load_settings

    settings = load_settings(path)
    assert settings["n_candidates"] >= 2 and settings["seed"] >= 0
