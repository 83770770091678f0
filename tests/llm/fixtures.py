"""Tiny LLM fixtures: a catalogue, funnel-style re-ranking lists, an in-memory BPE tokenizer and random Qwen3 models."""

from __future__ import annotations

import numpy as np
import torch

from thinkrec.llm.answer import render_answer
from thinkrec.llm.prompts import Catalogue, alignment_examples, rerank_prompt
from thinkrec.rerank.lists import N_FEATURES, RerankLists

CATEGORIES = ["Lipstick", "Nail Polish", "Shampoo", "Perfume"]
WORDS = ["matte", "red", "gloss", "long", "wear", "fresh", "rose", "silk", "pure", "bold"]


def catalogue(n_items: int = 40, seed: int = 0) -> Catalogue:
    rng = np.random.default_rng(seed)
    codes = np.array([(i // 12, (i // 3) % 4, i % 3) for i in range(n_items)], dtype=np.int64)
    cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(n_items)]
    titles = [f"{' '.join(rng.choice(WORDS, 2))} {cats[i].lower()} {i}" for i in range(n_items)]
    return Catalogue(codes, titles, cats)


def lists(n: int, n_items: int = 40, L: int = 5, H: int = 6, seed: int = 0, with_target: float = 0.8) -> RerankLists:
    rng = np.random.default_rng(seed)
    items = np.stack([rng.choice(n_items, L, replace=False) for _ in range(n)])
    labels = np.zeros((n, L), np.float32)
    has = rng.random(n) < with_target
    labels[np.nonzero(has)[0], rng.integers(0, L, n)[has]] = 1.0
    history = np.stack([rng.choice(n_items, H, replace=False) + 1 for _ in range(n)]).astype(np.int64)
    feats = rng.normal(size=(n, L, N_FEATURES)).astype(np.float32)
    feats[..., 3] += 2 * labels  # a planted signal the programmatic teacher's scorer can fit
    return RerankLists(np.arange(n, dtype=np.int64), history, items.astype(np.int64), labels, feats,
                       np.arange(n_items, dtype=np.int64) % len(CATEGORIES) + 1, "funnel")


def tokenizer(cat: Catalogue, train: RerankLists):
    """Byte-level BPE trained in memory on the prompts and answers it will see (any text stays encodable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [ex["prompt"] + ex["completion"] for ex in alignment_examples(cat, [np.arange(10)], 50)]
    for n in range(len(train)):
        cands = train.items[n].tolist()
        corpus.append(rerank_prompt(cat, (train.history[n] - 1).tolist(), cands))
        corpus.append(render_answer("the top pick shares a category", [cat.sid_tuple(i) for i in cands]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   padding_side="left")


def qwen3(vocab_size: int, seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return Qwen3ForCausalLM(config).float()


def save_tiny_llm(path) -> str:  # noqa: ANN001
    """A tiny random Qwen3 and its tokenizer saved like any Hugging Face checkpoint (for the pipeline's by-path load)."""
    cat = catalogue()
    tok = tokenizer(cat, lists(20, seed=3))
    qwen3(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
