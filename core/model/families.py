"""The model-family registry: for each architecture Vector Lab traces, where its parts live.

Everything that needs to know a family — the trace, the logit lens, the attention and position maths,
fine-tuning, the pages — asks this module; nothing else branches on the architecture. Adding a family
is one `register(Family(...))` here plus a tiny-config test.

Hook points are named the same for every family (TransformerLens style), so interventions and the
trace address "blocks.3.attn" or "blocks.3.heads" without knowing the module names behind them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import UnsupportedModelError

if TYPE_CHECKING:  # torch is imported lazily: the app draws its first page before any model loads
    from torch import nn

LEARNED = "learned"  # a learned absolute position table added to the token embedding (GPT-2's wpe)
ROTARY = "rotary"  # queries and keys rotated by position (RoPE)

# Hook points, the same for every family. {i} is a block index.
HOOK_EMBED = "embed"  # output: token embedding rows [B, T, d]
HOOK_POS = "pos"  # output: position vectors [B, T, d] (learned positions only)
HOOK_BLOCK_IN = "blocks.{i}.in"  # pre-hook: the residual stream entering block i [B, T, d]
HOOK_ATTN = "blocks.{i}.attn"  # output: (attention's contribution [B, T, d], weights [B, H, T, T])
HOOK_QKV = "blocks.{i}.qkv"  # output of the q/k/v projection(s), before rotary (see `Family.split_qkv`)
HOOK_HEADS = "blocks.{i}.heads"  # pre-hook on the output projection: head outputs [B, T, H·dh]
HOOK_MLP = "blocks.{i}.mlp"  # output: the MLP's contribution [B, T, d]
HOOK_BLOCK_OUT = "blocks.{i}.out"  # output: the residual stream after block i [B, T, d]
HOOK_FINAL_NORM = "final_norm"  # output: the normalised last residual [B, T, d]


@dataclass(frozen=True)
class ModelParts:
    """The modules of one loaded model, found through its family."""

    family: Family
    token_embedding: nn.Embedding  # [vocab, d_model]
    position_embedding: nn.Embedding | None  # [n_positions, d_model] for learned positions, else None
    blocks: nn.ModuleList  # the transformer blocks, bottom to top
    final_norm: nn.Module  # applied to the last residual before the unembedding
    lm_head: nn.Linear  # unembedding [vocab, d_model]; may share its weight with token_embedding
    tied: bool  # lm_head.weight is token_embedding.weight (one matrix, two uses)
    rotary_embedding: nn.Module | None  # the model's rotary module (owns inv_freq), None for learned
    max_positions: int | None  # longest sequence the model accepts (None: not stated)

    def attention(self, i: int) -> nn.Module:
        """Block i's attention module; it returns (contribution [B, T, d], weights [B, H, T, T])."""
        return getattr(self.blocks[i], self.family.attention_attr)

    def out_projection(self, i: int) -> nn.Module:
        """Block i's attention output projection; its input is the heads' outputs [B, T, H·dh]."""
        return getattr(self.attention(i), self.family.out_proj_attr)

    def attention_norm(self, i: int) -> nn.Module:
        """Block i's norm in front of attention (ln_1 / input_layernorm)."""
        return getattr(self.blocks[i], self.family.attention_norm_attr)

    def mlp(self, i: int) -> nn.Module:
        return self.blocks[i].mlp

    def qkv_modules(self, i: int) -> tuple[nn.Module, ...]:
        """The projection module(s) whose outputs `family.split_qkv` turns into q, k, v."""
        attn = self.attention(i)
        return tuple(getattr(attn, name) for name in self.family.qkv_attrs)

    def hook_module(self, point: str) -> nn.Module:
        """The module a named hook point attaches to (see the HOOK_* names)."""
        if point == HOOK_EMBED:
            return self.token_embedding
        if point == HOOK_POS:
            if self.position_embedding is None:
                raise KeyError(f"{self.family.label} has no position table (it uses rotary positions)")
            return self.position_embedding
        if point == HOOK_FINAL_NORM:
            return self.final_norm
        parts = point.split(".")
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise KeyError(f"unknown hook point {point!r}")
        i, what = int(parts[1]), parts[2]
        if what in ("in", "out"):
            return self.blocks[i]
        return {"attn": self.attention, "heads": self.out_projection, "mlp": self.mlp}[what](i)


@dataclass(frozen=True)
class Dimensions:
    """Shape facts read from a config."""

    n_layer: int
    n_head: int  # query heads
    n_kv_head: int  # key/value heads (< n_head: grouped-query attention)
    d_model: int
    d_head: int
    rotary_dim: int  # width of each head that is rotated (d_head, or less for partial rotary); 0 if none
    max_positions: int


@dataclass(frozen=True)
class Family:
    """How one architecture family is laid out. Strings name attributes on the Hugging Face modules."""

    name: str  # registry key, also `ModelInfo.family`
    label: str  # shown in the UI
    model_types: tuple[str, ...]  # config.model_type values that belong here
    positions: str  # LEARNED or ROTARY
    norm: str  # "LayerNorm" or "RMSNorm" (what the layer page explains)
    qkv_layout: str  # one line for the attention page, e.g. "fused c_attn: [q | k | v]"
    inner_attr: str  # attribute of the causal-LM wrapper that holds the decoder stack
    embed_attr: str  # on the stack: token embedding
    pos_attr: str | None  # on the stack: learned position table (None for rotary)
    blocks_attr: str  # on the stack: the block list
    final_norm_attr: str  # on the stack: the final norm
    rotary_attr: str | None  # on the stack: the rotary module (None for learned positions)
    attention_attr: str  # on a block: its attention module
    attention_norm_attr: str  # on a block: the norm in front of attention
    out_proj_attr: str  # on the attention module: its output projection
    qkv_attrs: tuple[str, ...]  # on the attention module: the q/k/v projection(s), in order
    split_qkv: Callable  # (outputs of qkv_attrs, n_head, n_kv_head, d_head) -> q, k, v [B, T, n·dh]
    dimensions: Callable[[Any], Dimensions]  # config -> Dimensions
    parallel_residual: Callable[[Any], bool] = lambda config: False  # attn and MLP read the same input

    def parts(self, model: Any) -> ModelParts:
        inner = getattr(model, self.inner_attr)
        token = getattr(inner, self.embed_attr)
        head = model.get_output_embeddings()
        return ModelParts(
            family=self,
            token_embedding=token,
            position_embedding=getattr(inner, self.pos_attr) if self.pos_attr else None,
            blocks=getattr(inner, self.blocks_attr),
            final_norm=getattr(inner, self.final_norm_attr),
            lm_head=head,
            tied=head is not None and head.weight is token.weight,
            rotary_embedding=getattr(inner, self.rotary_attr) if self.rotary_attr else None,
            max_positions=self.dimensions(model.config).max_positions,
        )

    def describe_positions(self, config: Any) -> str:
        """One line for the model card, e.g. "rotary (RoPE, θ=100000)"."""
        if self.positions == LEARNED:
            return f"learned absolute table ({self.pos_attr})"
        dims = self.dimensions(config)
        part = "" if dims.rotary_dim == dims.d_head else f", first {dims.rotary_dim} of {dims.d_head} dims"
        return f"rotary (RoPE, θ={rope_theta(config):g}{part})"

    def apply_rotary(self, model: Any) -> Callable:
        """The model's own `apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)` (None for learned)."""
        if self.positions != ROTARY:
            raise ValueError(f"{self.label} has learned positions, not rotary ones")
        attn = self.parts(model).attention(0)
        return sys.modules[type(attn).__module__].apply_rotary_pos_emb


# --------------------------------------------------------------------------- q/k/v layouts


def _split_fused_concat(outputs, n_head: int, n_kv_head: int, d_head: int):
    """GPT-2's c_attn: one [B, T, 3·d] output laid out as [q | k | v]."""
    (qkv,) = outputs
    return qkv.split(n_head * d_head, dim=-1)


def _split_separate(outputs, n_head: int, n_kv_head: int, d_head: int):
    """Llama-style q_proj, k_proj, v_proj: three outputs already separate."""
    q, k, v = outputs
    return q, k, v


def _split_fused_per_head(outputs, n_head: int, n_kv_head: int, d_head: int):
    """GPT-NeoX's query_key_value: [B, T, H·3·dh] laid out per head as [q_h | k_h | v_h]."""
    (qkv,) = outputs
    B, T, _ = qkv.shape
    q, k, v = qkv.view(B, T, n_head, 3 * d_head).chunk(3, dim=-1)
    return tuple(t.reshape(B, T, n_head * d_head) for t in (q, k, v))


# --------------------------------------------------------------------------- dimensions


def rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    return params if isinstance(params, dict) else {}


def rope_theta(config) -> float:
    """RoPE base θ, wherever this transformers version keeps it."""
    params = rope_parameters(config)
    if "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def _gpt2_dimensions(config) -> Dimensions:
    d_head = config.n_embd // config.n_head
    return Dimensions(
        config.n_layer, config.n_head, config.n_head, config.n_embd, d_head, 0, config.n_positions
    )


def _llama_dimensions(config) -> Dimensions:
    n_head = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_head
    return Dimensions(
        config.num_hidden_layers,
        n_head,
        getattr(config, "num_key_value_heads", None) or n_head,
        config.hidden_size,
        d_head,
        d_head,
        config.max_position_embeddings,
    )


def _neox_dimensions(config) -> Dimensions:
    n_head = config.num_attention_heads
    d_head = config.hidden_size // n_head
    fraction = rope_parameters(config).get("partial_rotary_factor", getattr(config, "rotary_pct", 1.0))
    return Dimensions(
        config.num_hidden_layers,
        n_head,
        n_head,
        config.hidden_size,
        d_head,
        int(d_head * fraction),
        config.max_position_embeddings,
    )


# --------------------------------------------------------------------------- the registry

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family; its model types must not belong to another one already."""
    for other in FAMILIES.values():
        shared = set(other.model_types) & set(family.model_types)
        if shared:
            raise ValueError(f"model types {sorted(shared)} already belong to {other.name}")
    FAMILIES[family.name] = family
    return family


GPT2 = register(
    Family(
        name="gpt2",
        label="GPT-2",
        model_types=("gpt2",),
        positions=LEARNED,
        norm="LayerNorm",
        qkv_layout="one fused projection c_attn, its output laid out [q | k | v]",
        inner_attr="transformer",
        embed_attr="wte",
        pos_attr="wpe",
        blocks_attr="h",
        final_norm_attr="ln_f",
        rotary_attr=None,
        attention_attr="attn",
        attention_norm_attr="ln_1",
        out_proj_attr="c_proj",
        qkv_attrs=("c_attn",),
        split_qkv=_split_fused_concat,
        dimensions=_gpt2_dimensions,
    )
)


def _llama_like(name: str, label: str, model_types: tuple[str, ...], qkv_note: str) -> Family:
    return Family(
        name=name,
        label=label,
        model_types=model_types,
        positions=ROTARY,
        norm="RMSNorm",
        qkv_layout=qkv_note,
        inner_attr="model",
        embed_attr="embed_tokens",
        pos_attr=None,
        blocks_attr="layers",
        final_norm_attr="norm",
        rotary_attr="rotary_emb",
        attention_attr="self_attn",
        attention_norm_attr="input_layernorm",
        out_proj_attr="o_proj",
        qkv_attrs=("q_proj", "k_proj", "v_proj"),
        split_qkv=_split_separate,
        dimensions=_llama_dimensions,
    )


LLAMA = register(
    _llama_like("llama", "Llama", ("llama",), "separate q_proj, k_proj, v_proj; fewer k/v heads (GQA)")
)
QWEN2 = register(
    _llama_like("qwen2", "Qwen2", ("qwen2",), "separate q_proj, k_proj, v_proj with biases; GQA")
)
MISTRAL = register(
    _llama_like("mistral", "Mistral", ("mistral",), "separate q_proj, k_proj, v_proj; GQA, sliding window")
)
GPT_NEOX = register(
    Family(
        name="gpt_neox",
        label="GPT-NeoX (Pythia)",
        model_types=("gpt_neox",),
        positions=ROTARY,
        norm="LayerNorm",
        qkv_layout="one fused projection query_key_value, laid out per head [q_h | k_h | v_h]",
        inner_attr="gpt_neox",
        embed_attr="embed_in",
        pos_attr=None,
        blocks_attr="layers",
        final_norm_attr="final_layer_norm",
        rotary_attr="rotary_emb",
        attention_attr="attention",
        attention_norm_attr="input_layernorm",
        out_proj_attr="dense",
        qkv_attrs=("query_key_value",),
        split_qkv=_split_fused_per_head,
        dimensions=_neox_dimensions,
        parallel_residual=lambda config: bool(getattr(config, "use_parallel_residual", False)),
    )
)


def family_for_config(config) -> Family:
    """The family of a model config; UnsupportedModelError (with the supported list) otherwise."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise UnsupportedModelError(
        f"not supported yet: {model_type} (Vector Lab traces these architectures: "
        f"{', '.join(supported_model_types())})"
    )


def family_of(model: Any) -> Family:
    return family_for_config(model.config)


def model_parts(model: Any) -> ModelParts:
    """The parts of `model`, found through its family."""
    return family_of(model).parts(model)


def supported_model_types() -> list[str]:
    return [t for family in FAMILIES.values() for t in family.model_types]
