"""Policy loading (HF directory / hub id, GGUF file, tiny LLaMA config), LoRA, references.

:func:`decoder_of` finds the decoder stack inside a causal LM (the trunk cache cuts its layer
list, hybrid prompts replace its ``embed_tokens``).

Reference handling:
    * LoRA from the base model: the reference is the policy with its adapter disabled —
      no second copy of the weights.
    * LoRA continuing from an SFT adapter (the alignment stage): the SFT adapter is loaded
      twice — a frozen ``reference`` adapter and the trainable ``default`` one that starts
      from the same weights. The reference is the policy with the ``reference`` adapter
      active (base + SFT adapter, exactly the SFT model); the exported adapter stands alone
      on the base model.
    * Full fine-tuning: a frozen second model built from the same source.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

REFERENCE_ADAPTER = "reference"
#: Written last into an export directory (``SDPOModule.export``): the files and their sizes.
EXPORT_MARKER = "export_complete.json"
#: Present while an export is being written (removed just before the marker is written).
EXPORT_IN_PROGRESS = ".export_in_progress"
TINY_DEFAULTS: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """LoRA hyperparameters (passed to ``peft.LoraConfig``).

    Attributes:
        r: rank of the adapter matrices.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter's input.
        target_modules: names of the linear layers that get adapters.
        layers_to_transform: decoder-layer indices that get adapters (``None``: all).
            Adapters on the top layers only make training cheaper: autograd does not
            backpropagate through frozen lower layers.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers_to_transform: list[int] | None = None


def _split_gguf(model_name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Accept ``dir`` + ``gguf_file`` or a direct path to a ``.gguf`` file."""
    if gguf_file is None and model_name_or_path.endswith(".gguf"):
        p = Path(model_name_or_path)
        return str(p.parent), p.name
    return model_name_or_path, gguf_file


def _check_exists(model_name_or_path: str, gguf_file: str | None) -> None:
    """Refuse a local model source that is missing, holds no model, or is not a GGUF file.

    Raises:
        ModelSourceError: naming the path and the reason.
    """
    from sdpo_lightning.errors import ModelSourceError

    local = Path(model_name_or_path)
    looks_local = model_name_or_path.startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.exists():
        raise ModelSourceError(f"model path {model_name_or_path!r} does not exist")
    if gguf_file:
        _check_gguf(local / gguf_file)
    elif local.is_dir() and not (local / "config.json").is_file():
        ggufs = sorted(p.name for p in local.glob("*.gguf"))
        hint = f"; to load its GGUF file give {str(local / ggufs[0])!r}" if ggufs else ""
        raise ModelSourceError(
            f"cannot load the model from {model_name_or_path!r}: the folder "
            f"holds no model (no config.json){hint}"
        )


def _check_gguf(path: Path) -> None:
    """Refuse a GGUF path that is missing, empty, or does not start with the GGUF magic."""
    from sdpo_lightning.errors import ModelSourceError

    if not path.is_file():
        raise ModelSourceError(f"GGUF file {str(path)!r} does not exist")
    with path.open("rb") as f:
        magic = f.read(4)
    if not magic:
        raise ModelSourceError(f"cannot load the model from {str(path)!r}: the GGUF file is empty")
    if magic != b"GGUF":
        raise ModelSourceError(
            f"cannot load the model from {str(path)!r}: not a GGUF file (it "
            "does not start with 'GGUF')"
        )


@contextlib.contextmanager
def _reading_gguf(src: str, gguf_file: str | None) -> Iterator[None]:
    """Name the GGUF file when the library fails to read it (e.g. a truncated download)."""
    import struct

    from sdpo_lightning.errors import ModelSourceError, one_line

    try:
        yield
    except (OSError, ValueError, EOFError, struct.error) as err:
        if not gguf_file or isinstance(err, ModelSourceError):
            raise
        path = str(Path(src) / gguf_file)
        raise ModelSourceError(
            f"cannot load the model from {path!r}: the GGUF file is truncated "
            f"or corrupt ({one_line(err)[:200]})"
        ) from err


def load_tokenizer(
    model_name_or_path: str | None,
    gguf_file: str | None = None,
    tokenizer_path: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load the tokenizer (from ``tokenizer_path`` if given, else from the model source).

    A missing pad token is set to EOS; padding is on the left (prompts are left-padded).
    """
    from transformers import AutoTokenizer

    if tokenizer_path is not None:
        tok = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
    elif model_name_or_path is not None:
        src, gguf = _split_gguf(model_name_or_path, gguf_file)
        _check_exists(src, gguf)
        kwargs = {"gguf_file": gguf} if gguf else {}
        with _reading_gguf(src, gguf):
            tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **kwargs)
    else:
        raise ValueError(
            "a tiny model needs tokenizer_path (e.g. made by `python -m sdpo_lightning.data.synthetic`)"
        )
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer of {tokenizer_path or model_name_or_path!r} has no EOS token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def build_policy(
    model_name_or_path: str | None,
    tokenizer: Any,
    gguf_file: str | None = None,
    tiny_config: dict[str, Any] | None = None,
    init_seed: int = 0,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> nn.Module:
    """Build the causal LM.

    Args:
        model_name_or_path: HF directory or hub id, or a ``.gguf`` path; ``None`` for tiny.
        tokenizer: the tokenizer (sizes the tiny model's vocabulary, sets special ids).
        gguf_file: GGUF file name inside ``model_name_or_path``.
        tiny_config: ``LlamaConfig`` overrides for a model built in code (random init with
            ``init_seed``, so the same config always gives the same weights).
        init_seed: seed of the tiny model's initialization.
        dtype: ``float32`` | ``bfloat16`` | ``float16``.
        trust_remote_code: allow custom modelling code (off by default).
        attn_implementation: e.g. ``sdpa`` or ``eager`` (default: transformers' choice).
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    if model_name_or_path is None:
        cfg = LlamaConfig(
            **{**TINY_DEFAULTS, **(tiny_config or {})},
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if attn_implementation:
            cfg._attn_implementation = attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = LlamaForCausalLM(cfg)
        return model.to(torch_dtype)
    src, gguf = _split_gguf(model_name_or_path, gguf_file)
    _check_exists(src, gguf)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    from sdpo_lightning.errors import ModelSourceError, one_line

    try:
        with _reading_gguf(src, gguf):
            model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except ModelSourceError:
        raise
    except (OSError, ValueError) as err:  # no / broken config or weights: the user's directory
        raise ModelSourceError(
            f"cannot load the model from {src!r}: {one_line(err)[:300]}"
        ) from err
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def apply_lora(model: nn.Module, lora: LoraSettings | None, init_adapter: str | None) -> nn.Module:
    """Wrap ``model`` with LoRA (new, or continuing from ``init_adapter`` with a frozen copy
    of it as the reference). With ``lora=None`` and no adapter, return ``model`` unchanged."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is not None:
        check_adapter_dir(init_adapter)
        peft_model = PeftModel.from_pretrained(
            model, init_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False
        )
        peft_model.load_adapter(init_adapter, adapter_name="default", is_trainable=True)
        peft_model.set_adapter("default")
        _freeze_adapter(peft_model, REFERENCE_ADAPTER)
        return peft_model
    if lora is None:
        return model
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
        layers_to_transform=list(lora.layers_to_transform) if lora.layers_to_transform else None,
    )
    return get_peft_model(model, config)


def check_adapter_dir(path: str | Path) -> None:
    """Refuse an adapter directory that is missing, incomplete or unreadable.

    A directory exported by this project carries :data:`EXPORT_MARKER`, written last, listing
    every file and its size: all must be there, whole. A directory without it (peft's own
    ``save_pretrained``, older exports) is accepted when ``adapter_config.json`` parses and
    ``adapter_model.safetensors`` (or ``adapter_model.bin``) reads.

    Raises:
        ModelSourceError: naming the directory, the file and the reason.
    """
    import json

    from sdpo_lightning.errors import ModelSourceError

    root = Path(path)
    where = f"init_adapter {str(root)!r}"
    if not root.is_dir():
        raise ModelSourceError(
            f"{where}: {'not a directory' if root.exists() else 'no such directory'}"
        )
    if (root / EXPORT_IN_PROGRESS).exists():
        raise ModelSourceError(
            f"{where}: incomplete export (its writer stopped before it finished)"
        )
    marker = root / EXPORT_MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError) as err:
            raise ModelSourceError(f"{where}: unreadable {EXPORT_MARKER} ({err})") from None
        for name, size in files.items():
            have = (root / name).stat().st_size if (root / name).is_file() else None
            if have != size:
                state = (
                    "is missing" if have is None else f"has {have} bytes, the export wrote {size}"
                )
                raise ModelSourceError(f"{where}: incomplete export: {name} {state}")
    config = root / "adapter_config.json"
    if not config.is_file():
        raise ModelSourceError(f"{where} is not a peft adapter directory (no adapter_config.json)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelSourceError(f"{where}: adapter_config.json is not valid JSON ({err})") from None
    weights = root / "adapter_model.safetensors"
    try:
        if weights.is_file():
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:  # reads and checks the header
                if not list(f.keys()):
                    raise ValueError("no tensors")
        elif (root / "adapter_model.bin").is_file():
            weights = root / "adapter_model.bin"
            torch.load(weights, map_location="cpu", weights_only=True)
        else:
            raise ModelSourceError(f"{where}: incomplete adapter: no adapter_model.safetensors")
    except ModelSourceError:
        raise
    except Exception as err:
        raise ModelSourceError(
            f"{where}: {weights.name} is unreadable or truncated ({str(err)[:200]})"
        ) from None
    if not marker.is_file():
        log.info(
            "%s has no %s (written by peft or an older version); its files read fine",
            root,
            EXPORT_MARKER,
        )


def _freeze_adapter(model: nn.Module, name: str) -> None:
    for pname, p in model.named_parameters():
        if f".{name}." in pname:
            p.requires_grad_(False)


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft.PeftModel``."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (``embed_tokens``, ``layers``, ``norm``) inside a causal LM.

    Args:
        model: A Hugging Face causal LM (``model.model`` is its decoder), possibly behind a
            ``peft.PeftModel``.

    Returns:
        The decoder module, whose ``layers`` is an ``nn.ModuleList``.

    Raises:
        ValueError: if the model has no such decoder.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, "model", None)
    if decoder is None or not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        raise ValueError(f"trunk cache: cannot find the decoder layers of {type(inner).__name__}")
    return decoder


@contextlib.contextmanager
def reference_mode(policy: nn.Module) -> Iterator[nn.Module]:
    """Temporarily turn a LoRA policy into its reference (see module docstring)."""
    if REFERENCE_ADAPTER in getattr(policy, "peft_config", {}):
        policy.set_adapter(REFERENCE_ADAPTER)
        try:
            yield policy
        finally:
            policy.set_adapter("default")
            _freeze_adapter(policy, REFERENCE_ADAPTER)
    else:
        with policy.disable_adapter():
            yield policy


def trainable_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Only the parameters that train (what checkpoints carry)."""
    return {prefix + n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
