"""``reference: cached`` end to end (``sdpo fit`` on tiny synthetic data): the same per-step
losses as ``reference: live`` — LoRA from the base model, full fine-tuning, and the alignment
stage continuing from an SFT adapter —, the cache is reused by a later run, and hard negatives
are the non-targets the cached reference scores highest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from sdpo_lightning.cli import cli_main
from tests.integration.test_cli import _config, _metrics

ATOL = 1e-5
PROBE = "tests.integration.test_cached_reference.NegativeProbe"
N_TRAIN, N_VAL = 16, 4
COMPARED = (
    "train/loss",
    "train/rewards/chosen",
    "train/rewards/rejected",
    "train/logps/rejected",
    "val/loss",
)


class NegativeProbe(Callback):
    """Writes, per training batch, the example indices, the chosen + negative candidate
    indices and the cached reference scores of the batch to ``<root>/negatives.json``."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        scores = pl_module.ref_cache.lookup("fit", batch["index"])
        self.rows.append(
            {
                "index": batch["index"].tolist(),
                "target": batch["target_index"].tolist(),
                "completion_index": batch["completion_index"].tolist(),
                "n_candidates": batch["candidate_mask"].sum(-1).tolist(),
                "scores": scores.tolist(),
                "epoch": trainer.current_epoch,
            }
        )

    def on_fit_end(self, trainer, pl_module) -> None:
        Path(trainer.default_root_dir, "negatives.json").write_text(json.dumps(self.rows))


@pytest.fixture(scope="module")
def small_dir(synthetic_dir, tmp_path_factory) -> Path:
    """The first rows of each synthetic split (the cache scores whole splits)."""
    out = tmp_path_factory.mktemp("small_synthetic")
    for name, n in (("train.json", N_TRAIN), ("valid.json", N_VAL), ("test.json", 4)):
        rows = json.loads((synthetic_dir / name).read_text())[:n]
        (out / name).write_text(json.dumps(rows))
    (out / "tokenizer").symlink_to(synthetic_dir / "tokenizer")
    return out


def _fit(
    tmp: Path, data_dir: Path, name: str, extra: list[str] = (), data: dict | None = None, **model
) -> list[dict]:
    path = _config(tmp, data_dir, name, objective=model.pop("objective", "sdpo"), **model)
    if data:
        cfg = yaml.safe_load(path.read_text())
        cfg["data"].update(data)
        path.write_text(yaml.safe_dump(cfg))
    cli_main(["fit", "-c", str(path), *extra])
    return _metrics(tmp / name)


def _series(rows: list[dict], key: str) -> list[tuple[str, float]]:
    return [(r["step"], float(r[key])) for r in rows if r.get(key)]


def _assert_same_losses(live: list[dict], cached: list[dict]) -> None:
    for key in COMPARED:
        a, b = _series(live, key), _series(cached, key)
        assert a and [s for s, _ in a] == [s for s, _ in b], key
        torch.testing.assert_close(
            torch.tensor([v for _, v in b]),
            torch.tensor([v for _, v in a]),
            rtol=0,
            atol=ATOL,
            msg=key,
        )


def test_lora_cached_reference_gives_the_live_losses_and_is_reused(
    tmp_path, small_dir, count_builds
):
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    cache_dir = str(tmp_path / "shared_cache")
    live = _fit(tmp_path, small_dir, "live", lora=lora, reference="live")
    assert count_builds == []
    cached = _fit(
        tmp_path, small_dir, "cached", lora=lora, reference="cached", reference_cache_dir=cache_dir
    )
    assert (
        count_builds == []
    )  # lazy: no full pre-build, rows are scored when a batch first needs them
    files = sorted(Path(cache_dir).glob("*.pt"))
    assert [p.name.split("-")[0] for p in files] == ["fit", "validate"]
    blobs = [torch.load(p, weights_only=True) for p in files]
    assert int(blobs[1]["filled"].sum()) == N_VAL  # validation sees every row
    assert 0 < int(blobs[0]["filled"].sum()) <= N_TRAIN
    assert torch.isfinite(blobs[0]["scores"][blobs[0]["filled"]]).all()
    _assert_same_losses(live, cached)
    # another run with other training settings reuses the files: no reference forward, no rewrite
    stamps = [p.stat().st_mtime_ns for p in files]
    again = _fit(
        tmp_path,
        small_dir,
        "again",
        lora=lora,
        reference="cached",
        reference_cache_dir=cache_dir,
        extra=["--model.optim.learning_rate", "0.001", "--trainer.max_steps", "1"],
    )
    assert count_builds == [] and [p.stat().st_mtime_ns for p in files] == stamps
    assert (
        _series(again, "train/loss")[0] == _series(cached, "train/loss")[0]
    )  # step 0: the same reference
    # the old full pre-build is still there
    full = _fit(
        tmp_path,
        small_dir,
        "full",
        lora=lora,
        reference="cached",
        reference_cache_build="full",
        reference_cache_dir=str(tmp_path / "full_cache"),
    )
    assert count_builds == [N_TRAIN, N_VAL]
    _assert_same_losses(live, full)


def test_full_fine_tuning_cached_reference_gives_the_live_losses(tmp_path, small_dir):
    """Policy == reference at the start; the cache must hold the initial weights' scores."""
    live = _fit(tmp_path, small_dir, "live", lora=None, reference="live", learning_rate=1e-3)
    cached = _fit(tmp_path, small_dir, "cached", lora=None, reference="cached", learning_rate=1e-3)
    _assert_same_losses(live, cached)
    first = _series(cached, "train/loss")[0][1]
    assert first == pytest.approx(
        torch.log(torch.tensor(4.0)).item(), abs=1e-5
    )  # log(1 + K) at step 0
    assert len({round(v, 4) for _, v in _series(cached, "train/loss")}) > 1  # the policy moved


def test_stage_two_from_sft_adapter_cached_equals_live_with_adapter_dropout(tmp_path, small_dir):
    """The reference is the SFT adapter, whose LoRA dropout must be off when it scores (live
    and cached alike), so both paths see the same deterministic reference."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.2, "target_modules": ["q_proj", "v_proj"]}
    _fit(tmp_path, small_dir, "sft", objective="sft", lora=lora, extra=["--trainer.max_steps", "1"])
    adapter = str(tmp_path / "sft" / "export")
    live = _fit(tmp_path, small_dir, "live", lora=lora, init_adapter=adapter, reference="live")
    cached = _fit(
        tmp_path, small_dir, "cached", lora=lora, init_adapter=adapter, reference="cached"
    )
    _assert_same_losses(live, cached)


@pytest.mark.parametrize("reference", ["cached", pytest.param("live", marks=pytest.mark.slow)])
def test_hard_negatives_are_the_top_scored_non_targets(tmp_path, small_dir, reference):
    """Two epochs of hard negatives; with ``reference: live`` the cache is built for mining only."""
    extra = [
        "--trainer.callbacks+=" + PROBE,
        "--trainer.max_steps",
        "8",
        "--trainer.limit_train_batches",
        "4",
        "--trainer.val_check_interval",
        "1.0",
    ]
    rows = _fit(
        tmp_path,
        small_dir,
        "hard",
        extra=extra,
        data={"negative_sampling": "hard"},
        reference=reference,
    )
    assert all(torch.isfinite(torch.tensor([v for _, v in _series(rows, "train/loss")])))
    probe = json.loads((tmp_path / "hard" / "negatives.json").read_text())
    assert len(probe) == 8 and {b["epoch"] for b in probe} == {0, 1}
    (fit_file,) = (tmp_path / "hard" / "reference_cache").glob("fit-*.pt")
    table = torch.load(fit_file, weights_only=True)["scores"]
    k = 3
    for b in probe:
        for i, ex in enumerate(b["index"]):
            n, target = b["n_candidates"][i], b["target"][i]
            scores = torch.tensor(b["scores"][i][:n])
            torch.testing.assert_close(scores, table[ex, :n])  # the scores are the file's
            non_targets = sorted(
                (j for j in range(n) if j != target), key=lambda j: (-float(scores[j]), j)
            )
            chosen, negatives = b["completion_index"][i][0], b["completion_index"][i][1:]
            assert chosen == target
            assert negatives == non_targets[:k], (ex, negatives, non_targets[:k])
            assert float(scores[negatives].min()) >= float(scores[non_targets[k:]].max())


def test_validate_alone_loads_or_builds_the_cache(tmp_path, small_dir):
    """``sdpo validate`` (no ``fit``, so no ``on_fit_start``) with ``reference: cached`` gives the
    live validation loss."""
    losses = {}
    for ref in ("live", "cached"):
        path = _config(tmp_path, small_dir, ref, objective="sdpo", reference=ref)
        cli_main(["validate", "-c", str(path)])
        losses[ref] = [v for _, v in _series(_metrics(tmp_path / ref), "val/loss")]
    assert losses["live"] and losses["cached"] == pytest.approx(losses["live"], abs=ATOL)
    assert list((tmp_path / "cached" / "reference_cache").glob("validate-*.pt"))


@pytest.mark.slow
def test_two_process_ddp_cached_equals_live_and_reuses_the_cache(tmp_path, small_dir):
    """Two CPU processes (DDP, gloo): each scores its share, the shares are all-gathered, rank 0
    writes the file; the losses equal the live reference's; a second run reuses the files on both
    ranks (the hit is decided collectively)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    def run(name: str, reference: str, cache_dir: Path) -> list[dict]:
        path = _config(
            tmp_path,
            small_dir,
            name,
            objective="sdpo",
            reference=reference,
            reference_cache_dir=str(cache_dir),
        )
        cfg = yaml.safe_load(path.read_text())
        cfg["trainer"].update(devices=2, strategy="ddp")
        path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "sdpo_lightning", "fit", "-c", str(path)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-5000:]
        return _metrics(tmp_path / name)

    cache_dir = tmp_path / "cache"
    live = run("live", "live", cache_dir)
    cached = run("cached", "cached", cache_dir)
    _assert_same_losses(live, cached)
    files = sorted(cache_dir.glob("*.pt"))
    assert [p.name.split("-")[0] for p in files] == ["fit", "validate"]
    fit = torch.load(files[0], weights_only=True)["scores"]
    assert fit.shape == (N_TRAIN, 20) and torch.isfinite(fit).all()  # every row, from both ranks
    stamps = [p.stat().st_mtime_ns for p in files]
    again = run("again", "cached", cache_dir)
    assert [p.stat().st_mtime_ns for p in files] == stamps  # reused, not rewritten
    _assert_same_losses(cached, again)
