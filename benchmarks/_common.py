"""Set-up shared by the step benchmarks (``step_cost.py``, ``trl_dpo.py``, ``throughput.py``):
the paths of the shared model and data, the LoRA settings, the fp32 copy of the GGUF model and
the benchmark batch.

``step_cost.py`` runs ``trl_dpo.py``'s worker and ``trl_dpo.py`` builds the same batch as
``step_cost.py``; both import what they share from here, so neither imports the other at the
top level (``step_cost.py`` imports ``trl_dpo`` inside its worker only).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA = SHARED / "data" / "lastfm" / "train.json"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
LORA_B_STD = 0.02


def prepare_model(gguf: Path, work_dir: Path) -> Path:
    """Dequantize the GGUF model once into an fp32 safetensors directory (loads in < 1 s)."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    out = work_dir / f"{gguf.stem}-fp32-{stat.st_size}-{stat.st_mtime_ns}"
    if (out / "model.safetensors").is_file():
        return out
    print(f"dequantizing {gguf} into {out} (once) ...", file=sys.stderr, flush=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.config.save_pretrained(str(tmp))
    save_model(model, str(tmp / "model.safetensors"))
    tmp.rename(out)
    return out


def build(cfg: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The module (LoRA policy with seeded non-zero B), data module and the batch with the
    chosen completion and K negatives (random, seeded) selected."""
    import torch

    from sdpo_lightning.data.collate import make_collate, negative_indices, select_completions
    from sdpo_lightning.data.datamodule import RecDataModule
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import ModelArgs, ObjectiveArgs, ScoringArgs

    k = max(1, cfg["k"])
    torch.manual_seed(cfg["seed"])
    naive = cfg["path"] == "naive"
    module = SDPOModule(
        source=ModelArgs(model_name_or_path=cfg["model_dir"]),
        lora=LORA,
        objective=ObjectiveArgs(
            name="sft" if cfg["kind"] == "sft" else "sdpo", num_negatives=k, beta=1.0
        ),
        scoring=ScoringArgs(
            mode="naive" if naive else "shared_prefix", reference="live" if naive else "cached"
        ),
    )
    module.configure_model()
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    with torch.no_grad():
        for name, p in sorted(module.policy.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * LORA_B_STD)
    module.policy.train()
    dm = RecDataModule(
        train_file=cfg["rows_file"],
        prompt_templates="music",
        num_negatives=k,
        batch_size=cfg["batch_size"],
        max_length=cfg["max_length"],
        seed=cfg["seed"],
    )
    dm.tokenizer = module.tokenizer
    dm.setup("fit")
    ds = dm.datasets["fit"]
    batch = make_collate(module.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    batch = select_completions(batch, negative_indices(batch, k, "random", cfg["seed"], epoch=0))
    return module, dm, batch
