"""Write plausible S-DPO / DPO run logs with Lightning's real loggers.

For demos of the analysis notebook before any training has run, and as test fixtures:
the files are written by ``CSVLogger`` / ``TensorBoardLogger`` themselves, with the
metric names the LightningModule logs, a LightningCLI-shaped ``config.yaml`` and an
optional ``summary.json``. The curves are made up; only their shapes follow the paper
(the preferred item's reward rises under S-DPO and slowly falls under DPO).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def default_hr1(objective: str, num_negatives: int) -> float:
    """A made-up final HR@1 that grows with K for S-DPO, as in the paper's study."""
    base = {"sft": 0.35, "dpo": 0.45, "dpo_k": 0.47}.get(objective, 0.5)
    bonus = 0.03 * math.log2(num_negatives) if objective == "sdpo" else 0.0
    return round(base + bonus, 4)


def _train_metrics(
    rng: np.random.Generator, objective: str, k: int, t: float, beta: float, per_negative: bool
) -> dict[str, float]:
    noise = lambda scale=0.08: float(rng.normal(0.0, scale))  # noqa: E731
    rising = 1.0 - math.exp(-3.0 * t)
    chosen = (0.9 if objective == "sdpo" else -0.4) * rising + noise()
    rejected = np.array([-(1.0 + 0.5 * i / max(k - 1, 1)) * rising + noise() for i in range(k)])
    gaps = rejected - chosen  # (K,)
    if objective == "dpo_k":
        loss = float(np.mean(np.logaddexp(0.0, gaps)))
    else:
        loss = float(np.logaddexp(0.0, np.log(np.sum(np.exp(gaps)))))
    metrics = {
        "loss": loss,
        "rewards/chosen": chosen,
        "rewards/rejected": float(rejected.mean()),
        "rewards/margins": float(chosen - rejected.mean()),
        "rewards/accuracies": float(np.clip(0.3 + 0.65 * rising + noise(0.05), 0, 1)),
        "logps/chosen": -25.0 + chosen / beta,
        "logps/rejected": -25.0 + float(rejected.mean()) / beta,
    }
    if per_negative:
        metrics.update({f"rewards/rejected_k{i}": float(r) for i, r in enumerate(rejected)})
    return metrics


def write_synthetic_run(
    run_dir: str | Path,
    *,
    objective: str = "sdpo",
    num_negatives: int = 3,
    steps: int = 40,
    steps_per_epoch: int = 10,
    beta: float = 1.0,
    per_negative: bool = True,
    loggers: Sequence[str] = ("csv", "tensorboard"),
    hr1: float | None = None,
    write_summary: bool = True,
    seed: int = 0,
) -> Path:
    """Writes a fake run's logs under ``run_dir`` (``csv/version_0``, ``tb/version_0``).

    Args:
        run_dir: the run directory to create.
        objective: ``sdpo``, ``dpo``, ``dpo_k`` or ``sft`` (recorded in the config).
        num_negatives: K, the number of rejected items per example.
        steps: training steps; validation runs at the end of every epoch.
        steps_per_epoch: steps per epoch.
        beta: the β recorded in the config and used for the fake log-probs.
        per_negative: also log ``train/rewards/rejected_k{k}``.
        loggers: any of ``"csv"`` and ``"tensorboard"``.
        hr1: the final test HR@1 (default :func:`default_hr1`).
        write_summary: write ``summary.json`` with the test HR@1.
        seed: noise seed.

    Returns:
        ``run_dir`` as a path.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    made = {
        "csv": lambda: CSVLogger(root, name="csv", version=0),
        "tensorboard": lambda: TensorBoardLogger(root, name="tb", version=0),
    }
    unknown = set(loggers) - set(made)
    if unknown or not loggers:
        raise ValueError(f"loggers must be a non-empty subset of {sorted(made)}")
    active = [made[name]() for name in loggers]
    hparams = {"objective": {"name": objective, "num_negatives": num_negatives, "beta": beta}}
    hr1 = default_hr1(objective, num_negatives) if hr1 is None else hr1
    rng = np.random.default_rng(seed)
    for step in range(steps):
        t, epoch = (step + 1) / steps, step // steps_per_epoch
        train = _train_metrics(rng, objective, num_negatives, t, beta, per_negative)
        logged = {f"train/{k}": v for k, v in train.items()}
        logged.update({"lr-AdamW": 1e-4 * (1.0 - t), "epoch": epoch})
        for logger in active:
            logger.log_metrics(logged, step=step)
        if (step + 1) % steps_per_epoch == 0 or step + 1 == steps:
            val = _train_metrics(rng, objective, num_negatives, t, beta, False)
            val = {f"val/{k}": v for k, v in val.items()}
            val.update(
                {"val/hr@1": hr1 * math.sqrt(t), "val/valid_ratio": 0.9 + 0.1 * t, "epoch": epoch}
            )
            for logger in active:
                logger.log_metrics(val, step=step)
    test = {"test/hr@1": hr1, "test/valid_ratio": 1.0, "epoch": (steps - 1) // steps_per_epoch}
    for logger in active:
        logger.log_metrics(test, step=steps - 1)
        logger.log_hyperparams(hparams)
        logger.save()
        logger.finalize("success")
    config = {
        "trainer": {"default_root_dir": str(root), "max_steps": steps},
        "model": {"class_path": "sdpo_lightning.training.module.SDPOModule", "init_args": hparams},
    }
    import yaml

    (Path(active[0].log_dir) / "config.yaml").write_text(yaml.safe_dump(config))
    if write_summary:
        summary = {"protocols": {"generation": {"hr@1": {"value": hr1}}}}
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return root
