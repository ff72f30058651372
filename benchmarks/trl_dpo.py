"""TRL's ``DPOTrainer`` on the same work as ``step_cost.py``'s DPO (K=1) rows.

Run by ``benchmarks/step_cost.py`` in a subprocess (``trl_worker``), on the batch that
``benchmarks/_common.py``'s ``build`` gives both; TRL is an optional
benchmark dependency (``pip install -e .[benchmark]``). Same model weights, LoRA adapter (the
same seeded non-zero B), rows, prompts and (chosen, rejected) pairs as our K=1 configuration;
the timed step is TRL's own ``training_step`` (policy forward + backward over the chosen and
rejected rows, plus the reference forward with the adapter disabled unless
``precompute_ref_log_probs``), in fp32 like ours (``DPOConfig`` defaults to ``bf16=True``, which
on a CPU runs the reference pass under bf16 autocast: set off here). TRL tokenizes
``prompt + completion`` itself; with this tokenizer the ids match ours, which the equal loss
confirms.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch


def trl_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        import trl
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer
    except Exception as err:  # ImportError, or a broken install
        return {
            "unavailable": f"TRL cannot be imported here ({type(err).__name__}: {err}); "
            "install it with `pip install -e .[benchmark]`"
        }
    from peft import LoraConfig

    from _common import LORA, build
    from timing import timed

    module, dm, batch = build({**cfg, "kind": "sdpo", "path": "naive", "k": 1})
    # TRL treats an adapter it is handed as the starting point and copies it as the reference;
    # to get our reference (the base model: a new adapter, disabled) it creates the adapter from
    # `peft_config`, and gets our seeded LoRA weights afterwards.
    lora_weights = {
        n: p.detach().clone() for n, p in module.policy.named_parameters() if "lora_" in n
    }
    base = module.policy.unload()
    module.policy = None
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=list(LORA["target_modules"]),
        task_type="CAUSAL_LM",
    )
    ds = dm.datasets["fit"]
    rows = []
    for i in range(len(ds)):
        ex = ds.examples[i]
        neg = int(batch["completion_index"][i, 1])  # our seeded negative for this row
        rows.append(
            {
                "prompt": ds.encoded[i].prompt,
                "chosen": dm.prompts.completion_text(ex.target),
                "rejected": dm.prompts.completion_text(ex.candidates[neg]),
            }
        )
    precompute = cfg["path"] == "precompute"
    spent: dict[str, float] = {}
    real = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            spent["precompute_s"] = spent.get("precompute_s", 0.0) + time.perf_counter() - t0

    DPOTrainer._precompute_ref_logps = timed_precompute
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=cfg["batch_size"],
            max_length=cfg["max_length"],
            beta=1.0,
            report_to="none",
            use_cpu=True,
            bf16=False,
            fp16=False,
            precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=cfg["batch_size"],
            disable_dropout=True,
            save_strategy="no",
            logging_strategy="no",
            dataloader_num_workers=0,
            seed=cfg["seed"],
            gradient_checkpointing=False,
        )
        trainer = DPOTrainer(
            model=base,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=module.tokenizer,
            peft_config=peft_config,
        )
        params = dict(trainer.model.named_parameters())
        missing = sorted(set(lora_weights) - set(params))
        if missing:
            raise RuntimeError(
                f"TRL's adapter lacks {len(missing)} LoRA weights, e.g. {missing[0]}"
            )
        with torch.no_grad():
            for name, value in lora_weights.items():
                params[name].copy_(value)
        inputs = next(iter(trainer.get_train_dataloader()))
        model = trainer.model
        trainer.current_gradient_accumulation_steps = (
            1  # set by `train()`; `training_step` divides by it
        )
        step = lambda: float(trainer.training_step(model, inputs))  # noqa: E731
        zero_grad = lambda: model.zero_grad(set_to_none=True)  # noqa: E731
        step()  # warm-up
        result = timed(step, zero_grad, cfg["repeats"], cfg["budget"])
    result.update(
        spent,
        trl_version=trl.__version__,
        tokens={
            "prompt": int(inputs["attention_mask"].sum(-1).max()),
            "rows": int(inputs["input_ids"].shape[0]),
        },
    )
    return result
