"""Per-GPU memory of LLaMA-2-7B S-DPO under ZeRO-2, ZeRO-3 and ZeRO-3 + CPU offload: a model.

Computed, not measured (no GPU here): parameter, gradient, optimizer-state and activation sizes
of the training step, per GPU, for a data-parallel group of ``N`` GPUs. Prints Markdown tables
(the README's "Training 7B models" section shows them).

Terms (bytes; ``Ψ_f`` frozen and ``Ψ_t`` trainable parameters, bf16 mixed precision):

* weights: ``2 Ψ_f + 2 Ψ_t`` (bf16) — ZeRO-2 replicates them, ZeRO-3 divides by ``N``, ZeRO-3 with
  parameter offload keeps them in CPU memory. Full fine-tuning with a live reference adds the
  frozen copy, ``2 Ψ`` (sharded like the policy under ZeRO-3).
* gradients: ``2 Ψ_t / N`` (bf16, reduce-scattered; ZeRO-2 and ZeRO-3).
* optimizer: ``12 Ψ_t / N`` (fp32 master weights + Adam moments); offloaded: 0 on the GPU.
* activations (gradient checkpointing per decoder layer; ``b`` examples per GPU, ``T`` tokens per
  example, ``L`` layers, hidden ``h``, MLP width ``i``)::

      b T (2 h L            the saved input of every layer
           + 22 h + 8 i     one layer recomputed in backward (norms 2x6h, q/k/v/out 10h, MLP 8i)
           + 3 h m          LoRA dropout copies of the m adapted projections' inputs
           + 6 h)           final norm
      + b n V 10            logits at the n = (K+1) C completion positions (bf16 + fp32 log-softmax)

  ``T = P + (K+1) C`` with shared-prefix scoring (prompt once, the K+1 completions packed after
  it); ``T = (K+1)(P + C)`` for the naive K+1 full rows (which also keep full logits).
  Without gradient checkpointing every layer keeps its ``22 h + 8 i (+3 h m)`` per token.
  Attention is flash / memory-efficient SDPA (no ``T^2`` term).
* DeepSpeed buffers: two gradient buckets of ``reduce_bucket_size`` bf16 elements
  (``overlap_comm``); ZeRO-3 also holds gathered parameters while a module runs (the largest
  parameter + one prefetch bucket of 5e7 elements).

Not included: CUDA context and allocator fragmentation (add ~1–2 GiB), the reference cache
(CPU), the no-grad reference forward of ``reference: live`` (one layer's activations at a time).

Usage::

    python benchmarks/memory_model.py                      # 4 GPUs, 4 examples per GPU
    python benchmarks/memory_model.py --gpus 8 --batch 8 --prompt-tokens 400
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class Llama:
    """Shapes of LLaMA-2-7B (``meta-llama/Llama-2-7b-hf``)."""

    vocab: int = 32000
    hidden: int = 4096
    intermediate: int = 11008
    layers: int = 32
    kv_heads_ratio: float = 1.0  # no grouped-query attention in the 7B model

    @property
    def layer_params(self) -> int:
        h, i = self.hidden, self.intermediate
        attn = 2 * h * h + 2 * int(h * h * self.kv_heads_ratio)  # q, o + k, v
        return attn + 3 * h * i + 2 * h  # MLP (gate, up, down) + 2 RMSNorms

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + 2 * self.vocab * self.hidden + self.hidden

    def lora_params(self, r: int, targets: tuple[str, ...]) -> int:
        h, i = self.hidden, self.intermediate
        dims = {
            "q_proj": (h, h),
            "k_proj": (h, h),
            "v_proj": (h, h),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        return self.layers * sum(r * (dims[t][0] + dims[t][1]) for t in targets)


@dataclass(frozen=True)
class Setup:
    gpus: int = 4
    batch: int = 4  # examples per GPU per micro-step
    prompt_tokens: int = 256
    completion_tokens: int = 12
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lora_dropout: bool = True
    lora_adapters: int = 2  # stage 2: trainable adapter + frozen SFT adapter (the reference)
    checkpointing: bool = True
    scoring: str = "shared_prefix"
    reduce_bucket: float = 2e8
    prefetch_bucket: float = 5e7


STRATEGIES = ("ZeRO-2", "ZeRO-3", "ZeRO-3 + offload")


def tokens(s: Setup, k: int) -> tuple[int, int]:
    """(tokens per example through the policy, logit positions kept per example)."""
    p, c = s.prompt_tokens, s.completion_tokens
    if s.scoring == "shared_prefix":
        return p + (k + 1) * c, (k + 1) * c
    return (k + 1) * (p + c), (k + 1) * (p + c)


def activations(m: Llama, s: Setup, k: int, lora: bool) -> float:
    h, i, L = m.hidden, m.intermediate, m.layers
    t, n = tokens(s, k)
    per_layer = 22 * h + 8 * i + (3 * h * len(s.lora_targets) if lora and s.lora_dropout else 0)
    per_token = (2 * h * L + per_layer if s.checkpointing else per_layer * L) + 6 * h
    return s.batch * (t * per_token + n * m.vocab * 10)


def per_gpu(m: Llama, s: Setup, strategy: str, k: int, lora: bool) -> dict[str, float]:
    """Bytes per GPU by term."""
    n = s.gpus
    if lora:
        trainable = m.lora_params(s.lora_r, s.lora_targets)
        frozen = m.params + (s.lora_adapters - 1) * trainable
        reference_copy = 0
    else:
        trainable, frozen, reference_copy = m.params, 0, m.params  # live reference: a frozen copy
    weights = 2 * (frozen + trainable + reference_copy)
    grads, optim = 2 * trainable / n, 12 * trainable / n
    buffers = 2 * s.reduce_bucket * 2
    if strategy == "ZeRO-2":
        pass
    elif strategy == "ZeRO-3":
        weights /= n
        buffers += 2 * (m.vocab * m.hidden + s.prefetch_bucket)
    else:  # ZeRO-3 + parameter and optimizer offload: shards and optimizer in CPU memory
        weights, optim = 0.0, 0.0
        grads = 0.0  # reduced into the bucket, then copied to the CPU optimizer
        buffers += 2 * (m.vocab * m.hidden + s.prefetch_bucket)
    return {
        "weights": weights,
        "grads": grads,
        "optimizer": optim,
        "activations": activations(m, s, k, lora),
        "buffers": buffers,
    }


def cpu_per_node(m: Llama, s: Setup, lora: bool, gpus_per_node: int) -> float:
    """CPU memory the offload variant needs per node (its share of the shards)."""
    trainable = m.lora_params(s.lora_r, s.lora_targets) if lora else m.params
    frozen = m.params + (s.lora_adapters - 1) * trainable if lora else m.params  # (reference copy)
    total = 2 * (frozen + trainable) + 16 * trainable  # bf16 weights; fp32 master, Adam, fp32 grads
    return total * min(gpus_per_node, s.gpus) / s.gpus


def table(m: Llama, s: Setup, lora: bool, ks: tuple[int, ...] = (3, 8)) -> str:
    g = lambda x: f"{x / GIB:.2f}"  # noqa: E731
    head = (
        ["strategy", "weights", "grads", "optimizer"]
        + [f"activations K={k}" for k in ks]
        + ["DS buffers"]
    )
    head += [f"**total K={k}**" for k in ks]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strat in STRATEGIES:
        parts = {k: per_gpu(m, s, strat, k, lora) for k in ks}
        first = parts[ks[0]]
        cells = [strat, g(first["weights"]), g(first["grads"]), g(first["optimizer"])]
        cells += [g(parts[k]["activations"]) for k in ks] + [g(first["buffers"])]
        cells += [f"**{g(sum(parts[k].values()))}**" for k in ks]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=4, help="data-parallel GPUs (all nodes)")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="examples per GPU per micro-step")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--completion-tokens", type=int, default=12)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--scoring", choices=("shared_prefix", "naive"), default="shared_prefix")
    args = ap.parse_args(argv)
    m = Llama()
    s = Setup(
        gpus=args.gpus,
        batch=args.batch,
        prompt_tokens=args.prompt_tokens,
        completion_tokens=args.completion_tokens,
        lora_r=args.lora_r,
        checkpointing=not args.no_checkpointing,
        scoring=args.scoring,
    )
    lora = m.lora_params(s.lora_r, s.lora_targets)
    print(
        f"LLaMA-2-7B: {m.params / 1e9:.2f}B parameters; LoRA r={s.lora_r} on "
        f"{', '.join(s.lora_targets)}: {lora / 1e6:.1f}M. {s.gpus} GPUs, {s.batch} examples per GPU, "
        f"prompt {s.prompt_tokens} + completions {s.completion_tokens} tokens, bf16, "
        f"{'gradient checkpointing' if s.checkpointing else 'no checkpointing'}, {s.scoring} scoring."
    )
    for k in (3, 8):
        t, n = tokens(s, k)
        print(f"K={k}: {t} tokens per example through the policy, {n} logit positions")
    node = min(args.gpus_per_node, s.gpus)
    for lora_, title in (
        (True, "S-DPO with LoRA (stage 2 from the SFT adapter; reference = frozen SFT adapter)"),
        (False, "S-DPO with full fine-tuning (live reference: a frozen copy)"),
    ):
        print(f"\n{title}, GiB per GPU:\n")
        print(table(m, s, lora=lora_))
        print(
            f"\nZeRO-3 + offload needs {cpu_per_node(m, s, lora_, node) / GIB:.1f} GiB of CPU memory per node "
            f"({node} GPUs per node)."
        )
    print("\nNot included: CUDA context and allocator fragmentation (~1-2 GiB per GPU).")


if __name__ == "__main__":
    main()
