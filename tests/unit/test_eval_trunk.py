"""``model.scoring.eval_trunk_dir``: the test rows' lower-layer activations persisted for later tests.

A 3-layer tiny LLaMA with LoRA (seeded non-zero B) on its top layer only: the one-pass
evaluator served from the persisted trunk gives the plain evaluator's ranking scores (fp32,
atol 1e-5) and free and constrained answers; a second module (another adapter, same base) reads the
file and computes no lower layer; a file of other lower layers is refused with its path.
"""

from __future__ import annotations

import json

import pytest
import torch

from sdpo_lightning.data.collate import make_collate
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.evaluation.evaluator import one_pass_outputs
from sdpo_lightning.training.module import SDPOModule
from sdpo_lightning.training.module_args import EvalArgs, ModelArgs, ScoringArgs

TINY3 = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=2,
)


def _module(synthetic_dir, trunk_dir, seed: int, layers=(2,), init_seed: int = 0) -> SDPOModule:
    lora = {
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj", "up_proj"],
        "layers_to_transform": list(layers),
    }
    torch.manual_seed(seed)  # LoRA A
    source = ModelArgs(
        tokenizer_path=str(synthetic_dir / "tokenizer"), tiny_config=TINY3, init_seed=init_seed
    )
    module = SDPOModule(
        source=source,
        lora=lora,
        eval=EvalArgs(max_new_tokens=10),
        scoring=ScoringArgs(eval_trunk_dir=str(trunk_dir) if trunk_dir else None),
    )
    module.configure_model()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.policy.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


@pytest.fixture(scope="module")
def batch(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaltrunk")
    (out / "test.json").write_text(
        json.dumps(json.loads((synthetic_dir / "test.json").read_text())[:6])
    )
    module = _module(synthetic_dir, None, 1)
    dm = RecDataModule(
        test_file=str(out / "test.json"),
        eval_batch_size=6,
        max_length=256,
        prompt_templates="music",
    )
    dm.tokenizer = module.tokenizer
    dm.setup("test")
    ds = dm.datasets["test"]
    return make_collate(module.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])


def test_constrained_generation_alone_is_served_too(synthetic_dir, tmp_path, batch):
    plain, served = _module(synthetic_dir, None, 1), _module(synthetic_dir, tmp_path, 1)
    plain.hparams.eval.constrained = served.hparams.eval.constrained = True
    want_texts, _ = one_pass_outputs(plain.eval_model(), batch, True, False)
    got_texts, scores = one_pass_outputs(served.eval_model(), batch, True, False)
    assert scores is None and got_texts == want_texts
    assert served.eval_trunk().builds == len(batch["index"])  # the trie walk read the served pass


@pytest.mark.parametrize("generation", [False, True])
def test_persisted_trunk_gives_the_plain_evaluation_and_is_reused(
    synthetic_dir, tmp_path, batch, generation
):
    for seed in (1, 2):  # two adapters on the same base: the second reads the first's file
        plain = _module(synthetic_dir, None, seed)
        plain.hparams.eval.constrained = True
        served = _module(synthetic_dir, tmp_path, seed)
        served.hparams.eval.constrained = True
        want_texts, want = one_pass_outputs(plain.eval_model(), batch, generation, True)
        got_texts, got = one_pass_outputs(served.eval_model(), batch, generation, True)
        torch.testing.assert_close(got.logps, want.logps, atol=1e-5, rtol=0)
        assert torch.equal(got.n_tokens, want.n_tokens)
        assert got_texts == want_texts
        cache = served.eval_trunk()
        assert cache.builds == (
            len(batch["index"]) if seed == 1 else 0
        )  # the second computes nothing
        if seed == 1:  # what on_test_epoch_end writes (no trainer here)
            cache.save(served._eval_trunk[1], served._eval_trunk[2])
    (path,) = tmp_path.glob("trunk-*.pt")
    assert path.name.startswith("trunk-2-")  # two frozen lower layers


@pytest.mark.parametrize("ranking", [False, True])
def test_free_generation_with_ranking_is_served(synthetic_dir, tmp_path, batch, ranking):
    """With ranking, free generation reads the served pass (trie_verify) and rows off the trie
    (all of them for this random adapter) are decoded by the whole model; alone, it keeps its
    prefill + decode (cheaper than the packed pass). The plain answers either way."""
    served = _module(synthetic_dir, tmp_path, 1)
    served.hparams.eval.constrained = False
    plain = _module(synthetic_dir, None, 1)
    want = one_pass_outputs(plain.eval_model(), batch, True, ranking)[0]
    assert one_pass_outputs(served.eval_model(), batch, True, ranking)[0] == want
    if ranking:
        assert served.eval_trunk().builds == len(batch["index"])
    else:
        assert served._eval_trunk is None  # never consulted


def test_other_lower_layers_are_refused_by_path(synthetic_dir, tmp_path, batch):
    first = _module(synthetic_dir, tmp_path, 1)
    one_pass_outputs(first.eval_model(), batch, False, True)
    cache, path, identity = first._eval_trunk
    cache.save(path, identity)
    other = _module(synthetic_dir, tmp_path, 1, init_seed=5)  # other base weights
    from sdpo_lightning.scoring.trunk_cache import TrunkCache, lower_layers_identity

    assert lower_layers_identity(other.policy, 2) != identity
    with pytest.raises(
        ValueError, match=f"trunk cache file {path}: written for other lower layers"
    ):
        TrunkCache.load(path, lower_layers_identity(other.policy, 2), 2)


def test_adapter_on_the_lowest_layer_is_an_error(synthetic_dir, tmp_path, batch):
    module = _module(synthetic_dir, tmp_path, 1, layers=(0, 1, 2))
    with pytest.raises(ValueError, match="eval_trunk_dir: the lowest decoder layer"):
        one_pass_outputs(module.eval_model(), batch, False, True)
