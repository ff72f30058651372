"""A small offline byte-level BPE tokenizer for tiny demo and test models.

The tokenizer is trained with the Hugging Face ``tokenizers`` library on a handful of
texts (item titles plus prompt words) and wrapped as a ``transformers`` fast tokenizer,
so the rest of the pipeline treats it exactly like a pretrained model's tokenizer.

Properties relied on elsewhere:

* Byte-level: the 256-byte alphabet is always in the vocabulary, so any text (any
  language, any emoji) encodes without ``<unk>`` and ``decode(encode(x)) == x``.
* ``add_prefix_space=False``: a completion such as ``" Crimson Harbor"`` keeps its
  leading space as part of its first token, and its ids never depend on what precedes
  it when prompt and completion are tokenized separately and concatenated. Tokenizing
  ``prompt + completion`` jointly gives the same ids too whenever the prompt ends with a
  non-whitespace character.
* ``add_special_tokens=True`` prepends ``<s>`` (BOS) and nothing else; EOS is appended
  by the caller where a completion must end.
* Deterministic: the same texts give the same vocabulary and ids in every process.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:  # transformers is imported lazily: build_bpe alone does not need it
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
#: Special tokens in id order: ``<s>`` = 0, ``</s>`` = 1, ``<pad>`` = 2, ``<unk>`` = 3.
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)


def build_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """Train the raw ``tokenizers`` byte-level BPE model (no ``transformers`` needed).

    Args:
        texts: Training texts (already materialised, order matters for determinism).
        vocab_size: Target vocabulary size including special tokens and the 256 bytes.

    Returns:
        The trained backend tokenizer with pre-tokenizer, decoder and BOS post-processor.
    """
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return backend


def _wrap(backend: Tokenizer, padding_side: str) -> PreTrainedTokenizerFast:
    """Wrap a backend tokenizer as a ``transformers`` fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    save_dir: str | Path | None = None,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline and wrap it for ``transformers``.

    Args:
        texts: Training texts, e.g. item titles and prompt-template words. Iterated
            once; their order is part of the input (same texts, same order → same
            vocabulary and ids).
        vocab_size: Target vocabulary size, counting the 4 special tokens and the 256
            byte symbols. Training stops early when no pair is left to merge, so the
            result can be smaller on a tiny corpus.
        save_dir: If given, ``save_pretrained`` the tokenizer there; load it back with
            :func:`load_tokenizer` or ``AutoTokenizer.from_pretrained(save_dir)``.
        padding_side: ``"right"`` (training) or ``"left"`` (batched generation); it
            stays settable on the returned object (``tok.padding_side = "left"``).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<s>``/``</s>``/``<pad>``/``<unk>`` set,
        which prepends ``<s>`` when ``add_special_tokens=True``.

    Raises:
        ValueError: If ``texts`` is empty or ``vocab_size`` cannot hold the base alphabet.
    """
    materialised = [str(t) for t in texts]
    if not materialised:
        raise ValueError("train_tokenizer needs at least one training text")
    minimum = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is below the byte-level minimum of {minimum}")
    tokenizer = _wrap(build_bpe(materialised, vocab_size), padding_side)
    if save_dir is not None:
        save_path = Path(save_dir)
        save_path.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(save_path))
    return tokenizer


def load_tokenizer(path: str | Path, padding_side: str | None = None) -> PreTrainedTokenizerBase:
    """Load a saved tokenizer from a local directory, never touching the network.

    Args:
        path: Directory written by :func:`train_tokenizer` (or any local HF tokenizer).
        padding_side: Optional override (``"left"`` for batched generation).

    Returns:
        The loaded tokenizer.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer
