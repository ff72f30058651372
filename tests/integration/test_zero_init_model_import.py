"""Model classes first imported while ``deepspeed.zero.Init`` is active keep their decorators.

transformers >= 5.25 wraps attention ``__init__`` (``@use_kernelized_func``, which sets
``_kernel_funcs``); a class defined inside ``zero.Init`` loses that wrapper once DeepSpeed
unpatches, so models built afterwards fail in ``forward`` (see
``sdpo_lightning.training.strategies.import_model_class``). This runs in a fresh interpreter: the
modelling module must not be imported yet when ``zero.Init`` starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import REPO

CONFIG = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    vocab_size=40,
)

SCRIPT = r"""
import sys
import torch, torch._dynamo, deepspeed
from transformers import LlamaConfig

deepspeed.init_distributed("gloo")
from sdpo_lightning.training.strategies import import_model_class, outside_zero_init

src, out = sys.argv[1], sys.argv[2]
config = LlamaConfig.from_pretrained(src)
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
with deepspeed.zero.Init(config_dict_or_path=ds):
    import_model_class(src)  # what SDPOModule.configure_model does under ZeRO-3
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(config)  # the policy: sharded while zero.Init is active
    with outside_zero_init():  # LoRA is applied like this
        pass
    reference = LlamaForCausalLM(config)  # the frozen reference of full fine-tuning
torch.manual_seed(0)
model = LlamaForCausalLM(config).eval()  # built after zero.Init exited
with torch.no_grad():
    with deepspeed.zero.GatheredParameters(list(reference.parameters())):
        reference(torch.tensor([[1, 2, 3, 4]]))  # unfixed: no attribute '_kernel_funcs'
    torch.save(model(torch.tensor([[1, 2, 3, 4]])).logits, out)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_model_built_after_zero_init_exits_runs_like_one_built_without_it(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    src, out = tmp_path / "config", tmp_path / "out.pt"
    LlamaConfig(**CONFIG).save_pretrained(src)
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(src), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(src)).eval()
    with torch.no_grad():
        expected = model(torch.tensor([[1, 2, 3, 4]])).logits
    torch.testing.assert_close(torch.load(out), expected)
