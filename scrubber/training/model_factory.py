"""Small causal-LM configs built locally (no hub): GPT-2 or Llama shaped."""

from __future__ import annotations

from typing import Literal

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

Arch = Literal["gpt2", "llama"]


def small_causal_lm(
    vocab_size: int,
    *,
    arch: Arch = "gpt2",
    n_layer: int = 4,
    d_model: int = 128,
    n_head: int = 4,
    n_positions: int = 256,
    bos_token_id: int = 0,
    eos_token_id: int = 0,
    pad_token_id: int | None = None,
    seed: int = 0,
    attn_implementation: str = "eager",
) -> PreTrainedModel:
    """A randomly initialised model; dropout off (expensive on CPU, and small models need none).

    Special-token ids come from the tokenizer: GPT-2's defaults (50256) would
    point outside a small vocabulary.
    """
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=n_positions,
            n_embd=d_model,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            num_key_value_heads=n_head,
            max_position_embeddings=n_positions,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=False,
        )
    else:
        raise ValueError(f"unknown architecture {arch!r}: use gpt2 or llama")
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
