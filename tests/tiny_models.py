"""Tiny, seeded, randomly initialised models of both families, built from configs (no downloads)."""

from __future__ import annotations


def tiny_gpt2_model(vocab_size: int):
    """GPT-2 with HF's own test sizes: n_embd=32, 2 layers, 2 heads; lm_head tied to wte."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    return GPT2LMHeadModel(config).eval()


def tiny_llama_model(vocab_size: int, tie_word_embeddings: bool = True):
    """Llama with grouped-query attention: 4 query heads share 2 key/value heads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings,
    )
    return LlamaForCausalLM(config).eval()
