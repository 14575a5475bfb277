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


def _tiny_config(config_class, vocab_size: int, **extra):
    """HF's test sizes for a rotary family: d=32, 2 layers, 4 query heads."""
    return config_class(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        **extra,
    )


def tiny_qwen2_model(vocab_size: int):
    """Qwen2: q/k/v projections with biases, grouped-query attention (4 query heads, 2 k/v heads)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = _tiny_config(Qwen2Config, vocab_size, num_key_value_heads=2, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def tiny_mistral_model(vocab_size: int):
    """Mistral: grouped-query attention; no sliding window at these lengths."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    torch.manual_seed(0)
    config = _tiny_config(MistralConfig, vocab_size, num_key_value_heads=2, sliding_window=None)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def tiny_gpt_neox_model(vocab_size: int):
    """GPT-NeoX (Pythia): fused per-head query_key_value, rotary on half of each head, parallel residual."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    torch.manual_seed(0)
    config = _tiny_config(GPTNeoXConfig, vocab_size, rotary_pct=0.5, use_parallel_residual=True)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
