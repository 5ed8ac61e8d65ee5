"""A tiny random backbone and a word-level tokenizer built in code (``--base builtin-tiny`` and tests).

Nothing is downloaded: the tokenizer is a ``tokenizers`` WordLevel model (whitespace/punctuation
pre-tokenizer) whose vocabulary is the words of the given texts; the backbone is a randomly
initialised ``LlamaModel`` (a few thousand parameters). Good enough to learn synthetic preference
structure (style words, cycles) in seconds on a CPU; not a language model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[SEP]", "[EOS]"]


def build_word_tokenizer(texts: Iterable[str], *, max_vocab: int = 5000) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the words of ``texts`` (+ [PAD] [UNK] [SEP] [EOS])."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=max_vocab, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", sep_token="[SEP]", eos_token="[EOS]"
    )


def tiny_llama_config(
    vocab_size: int, *, hidden_size: int = 32, num_layers: int = 1, num_heads: int = 2
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=3,
        tie_word_embeddings=False,
    )


def build_tiny_backbone(
    vocab_size: int, *, hidden_size: int = 32, num_layers: int = 1, num_heads: int = 2, seed: int = 0
) -> LlamaModel:
    """A randomly initialised ``LlamaModel`` (no LM head), seeded."""
    config = tiny_llama_config(vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaModel(config)
    return model


def build_tiny_causal_lm(
    vocab_size: int, *, hidden_size: int = 32, num_layers: int = 1, num_heads: int = 2, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM``, seeded (``inpo judge train --kind lm-pair --base builtin-tiny``)."""
    config = tiny_llama_config(vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def save_tiny_base(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny base model directory (config.json, model.safetensors, tokenizer) usable as ``--base``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_word_tokenizer(texts)
    model = build_tiny_backbone(
        len(tokenizer), hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, seed=seed
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
