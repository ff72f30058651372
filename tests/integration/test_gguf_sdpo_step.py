"""The real pretrained model: SmolLM2-135M (GGUF) computes the S-DPO loss on a LastFM batch
and takes one optimizer step. Skipped, with the reason printed, only where ../shared is absent."""

from __future__ import annotations

import json
import math

import torch

from sdpo_lightning.data.collate import negative_indices, select_completions
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.modeling.models import LoraSettings
from sdpo_lightning.training.module import SDPOModule
from sdpo_lightning.training.module_args import ModelArgs, ObjectiveArgs
from sdpo_lightning.training.objectives import preference_loss
from tests.conftest import GGUF, LASTFM, require_shared


def test_smollm2_sdpo_loss_and_one_step(tmp_path):
    require_shared(GGUF)
    require_shared(LASTFM / "train.json")
    rows = json.loads((LASTFM / "train.json").read_text())[:4]
    (tmp_path / "train.json").write_text(json.dumps(rows))

    module = SDPOModule(
        source=ModelArgs(model_name_or_path=str(GGUF)),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        objective=ObjectiveArgs(name="sdpo", beta=1.0, num_negatives=3),
    )
    module.configure_model()
    dm = RecDataModule(
        train_file=str(tmp_path / "train.json"),
        prompt_templates="music",
        num_negatives=3,
        batch_size=2,
        max_length=512,
    )
    dm.tokenizer = module.tokenizer
    dm.setup("fit")
    batch = select_completions(
        *(lambda b: (b, negative_indices(b, 3, "random", 0, 0)))(next(iter(dm.train_dataloader())))
    )
    ids, mask = batch["completion_input_ids"], batch["completion_attention_mask"]
    assert ids.shape[:2] == (2, 4)

    def loss_now():
        pol = module.score(batch, ids, mask).logps  # (B, 1+K)
        ref = module.reference_logps(batch, ids, mask)
        out = preference_loss("sdpo", pol[:, 0], pol[:, 1:], ref[:, 0], ref[:, 1:], beta=1.0)
        return out.losses.mean(), pol

    trainable = [p for p in module.policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    loss, pol = loss_now()
    # fresh LoRA (B = 0): policy == reference, so every reward is 0 and L = log(1 + K)
    assert torch.isfinite(pol).all() and (pol < 0).all()
    assert math.isclose(loss.item(), math.log(4), abs_tol=1e-4)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in trainable)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable, strict=False))
    with torch.no_grad():
        after, _ = loss_now()
    assert torch.isfinite(after) and after.item() != loss.item()
