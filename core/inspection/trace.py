"""One forward pass → one `Trace`: every vector a page shows, captured with hooks in a single run.

Shapes use T = tokens, d = model width, L = layers, H = query heads, Hkv = key/value heads,
dh = head width, V = vocabulary, k = top-k kept per position.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from core.errors import InputError, SettingsError
from core.model.capture import recording_attention
from core.model.families import HOOK_EMBED, HOOK_POS, family_of, rope_theta
from core.model.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceConfig:
    """How much of a text to trace and what to keep."""

    max_tokens: int = 512  # longer texts are cut here (attention alone is L·H·T² floats)
    top_k: int = 10  # next-token candidates kept at every position

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise SettingsError("max_tokens must be at least 1 (try 512).")
        if not 1 <= self.top_k <= 1000:
            raise SettingsError("top_k must be between 1 and 1000 (try 10).")


@dataclass(frozen=True)
class RotaryInfo:
    """How a Llama-style model encodes position: it rotates q/k pairs instead of adding a vector."""

    theta: float  # RoPE base
    d_head: int  # rotated width per head
    inv_freq: np.ndarray  # [dh/2] angular speed of each pair, θ^(-2i/dh)
    positions: np.ndarray  # [T] positions used in the pass
    cos: np.ndarray  # [T, dh] the model's own cos table for these positions
    sin: np.ndarray  # [T, dh]


@dataclass(frozen=True)
class Trace:
    """Everything one forward pass of one text produced. Arrays are float32 numpy, batch dropped."""

    text: str  # the traced text (already cut to max_tokens)
    family: str  # registry name of the model's family (core.model.families)
    model_name: str
    truncated: bool  # True when the input had more than max_tokens tokens
    n_tokens_in_text: int  # token count of the whole original text
    token_ids: np.ndarray  # [T] int64
    pieces: tuple[str, ...]  # [T] each token's text as it appears in `text`
    byte_offsets: tuple[tuple[int, int], ...]  # [T] (start, end) into text.encode("utf-8")
    token_embeddings: np.ndarray  # [T, d] rows of the embedding matrix
    position_vectors: np.ndarray | None  # [T, d] rows of wpe (GPT-2); None for rotary models
    rotary: RotaryInfo | None  # rotary description (Llama); None for GPT-2
    block_input: np.ndarray  # [T, d] what the first block receives
    q_layers: tuple[np.ndarray, ...]  # L × [H, T, dh] queries as attention received them (after rotary)
    k_layers: tuple[np.ndarray, ...]  # L × [Hkv, T, dh] keys, after rotary
    v_layers: tuple[np.ndarray, ...]  # L × [Hkv, T, dh] values
    q_pre_rotary_layers: tuple[np.ndarray, ...] | None  # L × [H, T, dh] q projection output (rotary
    # models); None for GPT-2
    k_pre_rotary_layers: tuple[np.ndarray, ...] | None  # L × [Hkv, T, dh] k projection output
    attention_layers: tuple[np.ndarray, ...]  # L × [H, T_query, T_key] softmax weights, as the model
    # returned them (see `attentions` for one [L, H, T, T] array); causal upper triangle is 0
    head_output_layers: tuple[np.ndarray, ...]  # L × [T, H, dh] attention-weighted sums of V rows
    attn_out_layers: tuple[np.ndarray, ...]  # L × [T, d] attention's contribution to the residual stream
    mlp_out_layers: tuple[np.ndarray, ...]  # L × [T, d] the MLP's contribution
    residual_layers: tuple[np.ndarray, ...]  # (L+1) × [T, d] block input, then after every block
    scaling: float  # the attention score scale used, 1/√dh for these models
    top_ids: np.ndarray  # [T, k] most likely next tokens at every position
    top_probs: np.ndarray  # [T, k] their probabilities
    target_logprobs: np.ndarray  # [T-1] log p(actual token t+1 | tokens ≤ t)
    last_logits: np.ndarray  # [V] logits after the last token
    last_probs: np.ndarray  # [V] softmax(last_logits)

    # The stacked [L, ...] arrays are built on first use: a page that reads one layer, or none, does
    # not pay for copying every layer into one block.

    @cached_property
    def q(self) -> np.ndarray:
        """[L, H, T, dh] queries, after rotary where the model applies it."""
        return _stacked(self.q_layers)

    @cached_property
    def k(self) -> np.ndarray:
        """[L, Hkv, T, dh] keys, after rotary."""
        return _stacked(self.k_layers)

    @cached_property
    def v(self) -> np.ndarray:
        """[L, Hkv, T, dh] values."""
        return _stacked(self.v_layers)

    @cached_property
    def q_pre_rotary(self) -> np.ndarray | None:
        """[L, H, T, dh] queries before rotary (rotary models); None for learned positions."""
        return None if self.q_pre_rotary_layers is None else _stacked(self.q_pre_rotary_layers)

    @cached_property
    def k_pre_rotary(self) -> np.ndarray | None:
        """[L, Hkv, T, dh] keys before rotary; None for learned positions."""
        return None if self.k_pre_rotary_layers is None else _stacked(self.k_pre_rotary_layers)

    @cached_property
    def residual(self) -> np.ndarray:
        """[L+1, T, d] residual stream: block input, then after every block."""
        return _stacked(self.residual_layers)

    @cached_property
    def attentions(self) -> np.ndarray:
        """[L, H, T_query, T_key] every layer's weights in one array, built on first use.

        For Llama-sized models at 512 tokens this is hundreds of MB, so the pass itself keeps the
        per-layer arrays and only pages that need the whole block pay for stacking it.
        """
        return _stacked(self.attention_layers)

    @cached_property
    def head_outputs(self) -> np.ndarray:
        """[L, H, T, dh] each head's output, built on first use from `head_output_layers`."""
        return _frozen(np.stack([h.transpose(1, 0, 2) for h in self.head_output_layers]))

    @cached_property
    def attn_out(self) -> np.ndarray:
        """[L, T, d] the attention blocks' contributions, stacked on first use."""
        return _stacked(self.attn_out_layers)

    @cached_property
    def mlp_out(self) -> np.ndarray:
        """[L, T, d] the MLPs' contributions, stacked on first use."""
        return _stacked(self.mlp_out_layers)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def n_layer(self) -> int:
        return len(self.q_layers)

    @property
    def n_head(self) -> int:
        return self.q_layers[0].shape[0]

    @property
    def n_kv_head(self) -> int:
        return self.k_layers[0].shape[0]

    def kv_head_of(self, head: int) -> int:
        """Which key/value head query head `head` reads (grouped-query attention)."""
        return head // (self.n_head // self.n_kv_head)


def tokenize(loaded: LoadedModel, text: str, max_tokens: int | None = None):
    """Token ids, display pieces and byte offsets of `text`, as the model's tokenizer sees it.

    Returns (ids [T], pieces, byte_offsets, n_total). Raises InputError on empty text.
    """
    if text is None or not text.strip():
        raise InputError("The text is empty. Type a sentence in the sidebar to trace it.")
    enc = loaded.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(enc["input_ids"])
    offsets = list(enc["offset_mapping"])
    n_total = len(ids)
    if max_tokens is not None:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    pieces, byte_offsets = [], []
    for token_id, (start, end) in zip(ids, offsets, strict=True):
        piece = text[start:end] if end > start else loaded.tokenizer.decode([token_id])
        pieces.append(piece)
        b0 = len(text[:start].encode("utf-8"))
        byte_offsets.append((b0, b0 + len(text[start:end].encode("utf-8"))))
    return np.asarray(ids, dtype=np.int64), tuple(pieces), tuple(byte_offsets), n_total


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _frozen(a: np.ndarray) -> np.ndarray:
    """Read-only: a trace is cached and shared by every session, so no page may write into it."""
    a.setflags(write=False)
    return a


def _stacked(layers) -> np.ndarray:
    return _frozen(np.stack(layers))


def _np(t) -> np.ndarray:
    return _frozen(t.detach().to("cpu").float().numpy())


def run_trace(loaded: LoadedModel, text: str, config: TraceConfig | None = None) -> Trace:
    """Run `text` through the model once and capture every intermediate vector.

    Hooks found through the model's family (core.model.families) take the module outputs; q, k, v are
    recorded inside each attention call (core.model.capture), after the model applied rotary, so nothing
    is recomputed afterwards. Only calls made from this thread are recorded: the model is shared, and
    another session may be running it at the same time.
    """
    import torch

    config = config or TraceConfig()
    model, info = loaded.model, loaded.info
    family = family_of(model)
    parts = family.parts(model)
    ids, pieces, byte_offsets, n_total = tokenize(loaded, text, config.max_tokens)
    if len(ids) > info.max_positions:
        ids, pieces, byte_offsets = (
            ids[: info.max_positions],
            pieces[: info.max_positions],
            byte_offsets[: info.max_positions],
        )
    T = len(ids)
    traced_text = text if T == n_total else text[: _char_end(text, byte_offsets[-1][1])]
    L = len(parts.blocks)
    learned = parts.position_embedding is not None

    per_layer = ("q", "k", "v", "qkv", "w", "heads", "attn", "mlp", "block_out")
    got: dict[str, list] = {k: [None] * L for k in per_layer}
    got["embed"], got["pos"], got["block_in"], got["rope"] = [None], [None], [None], [None]
    layer_of = {parts.attention(i): i for i in range(L)}
    owner = threading.get_ident()
    handles = []

    def mine() -> bool:
        return threading.get_ident() == owner

    def keep(name, index=0):
        def hook(_module, _args, output):
            if mine():
                got[name][index] = _first(output)

        return hook

    def record(module, query, key, value):  # [1, H, T, dh], [1, Hkv, T, dh] ×2, post-rotary
        i = layer_of.get(module)
        if i is not None:
            got["q"][i], got["k"][i], got["v"][i] = query[0], key[0], value[0]

    try:
        handles.append(parts.hook_module(HOOK_EMBED).register_forward_hook(keep("embed")))
        if learned:
            handles.append(parts.hook_module(HOOK_POS).register_forward_hook(keep("pos")))

        def block_input_hook(_module, args, kwargs):
            if mine():
                got["block_in"][0] = args[0] if args else kwargs["hidden_states"]

        handles.append(parts.blocks[0].register_forward_pre_hook(block_input_hook, with_kwargs=True))
        for i in range(L):

            def attn_hook(_module, _args, output, i=i):
                if mine():
                    got["attn"][i], got["w"][i] = output[0], output[1]

            def heads_hook(_module, args, i=i):
                if mine():
                    got["heads"][i] = args[0]

            attn = parts.attention(i)
            handles.append(attn.register_forward_hook(attn_hook))
            handles.append(parts.out_projection(i).register_forward_pre_hook(heads_hook))
            handles.append(parts.mlp(i).register_forward_hook(keep("mlp", i)))
            handles.append(parts.blocks[i].register_forward_hook(keep("block_out", i)))
            if learned:  # the recorded q/k are the projections themselves
                continue
            # Rotary: the projections before rotary too, so the rotation can be checked against them.
            projections = parts.qkv_modules(i)
            got["qkv"][i] = [None] * len(projections)
            for j, module in enumerate(projections):

                def qkv_hook(_module, _args, output, i=i, j=j):
                    if mine():
                        got["qkv"][i][j] = output

                handles.append(module.register_forward_hook(qkv_hook))
            if i == 0:  # every layer rotates with the same (cos, sin) tables

                def rope_hook(_module, _args, kwargs):
                    if mine():
                        got["rope"][0] = kwargs["position_embeddings"]

                handles.append(attn.register_forward_pre_hook(rope_hook, with_kwargs=True))

        with torch.inference_mode(), recording_attention(model, record):
            out = model(input_ids=torch.as_tensor(ids)[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()

    with torch.inference_mode():
        logits = out.logits[0]  # [T, V]
        # log p = logit − logsumexp(row): only the entries kept are normalised, and the row sums go a
        # few rows at a time so that their exp() temporaries never make a second [T, V] array.
        lse = torch.cat([torch.logsumexp(rows, dim=-1, keepdim=True) for rows in logits.split(64)])  # [T, 1]
        top_logits, top_ids = logits.topk(config.top_k, dim=-1)
        top_lp = top_logits - lse
        target_lp = logits[:-1].gather(1, torch.as_tensor(ids[1:])[:, None])[:, 0] - lse[:-1, 0]
        last_probs = torch.softmax(logits[-1].double(), dim=-1).float()

    rotary = q_pre = k_pre = None
    if not learned:

        def heads(x, n):  # [1, T, n·dh] -> [n, T, dh], a view
            return _np(x[0].view(T, n, info.d_head).transpose(0, 1))

        split = [family.split_qkv(outs, info.n_head, info.n_kv_head, info.d_head) for outs in got["qkv"]]
        q_pre = tuple(heads(qi, info.n_head) for qi, _, _ in split)
        k_pre = tuple(heads(ki, info.n_kv_head) for _, ki, _ in split)
        cos, sin = got["rope"][0]
        rotary = RotaryInfo(
            theta=rope_theta(model.config),
            d_head=cos.shape[-1],  # the rotated width: d_head, or less for partial rotary
            inv_freq=_np(parts.rotary_embedding.inv_freq),  # the model's own angular speeds
            positions=np.arange(T),
            cos=_np(cos[0]),
            sin=_np(sin[0]),
        )

    return Trace(
        text=traced_text,
        family=info.family,
        model_name=info.name,
        truncated=T < n_total,
        n_tokens_in_text=n_total,
        token_ids=_frozen(ids),
        pieces=pieces,
        byte_offsets=byte_offsets,
        token_embeddings=_np(got["embed"][0][0]),
        position_vectors=_np(got["pos"][0][0]) if learned else None,
        rotary=rotary,
        block_input=_np(got["block_in"][0][0]),
        q_layers=tuple(_np(q) for q in got["q"]),
        k_layers=tuple(_np(k) for k in got["k"]),
        v_layers=tuple(_np(v) for v in got["v"]),
        q_pre_rotary_layers=q_pre,
        k_pre_rotary_layers=k_pre,
        attention_layers=tuple(_np(w[0]) for w in got["w"]),
        head_output_layers=tuple(_np(h[0]).reshape(T, info.n_head, info.d_head) for h in got["heads"]),
        attn_out_layers=tuple(_np(a[0]) for a in got["attn"]),
        mlp_out_layers=tuple(_np(m[0]) for m in got["mlp"]),
        residual_layers=(_np(got["block_in"][0][0]),) + tuple(_np(_first(o)[0]) for o in got["block_out"]),
        scaling=float(parts.attention(0).scaling),
        top_ids=_frozen(top_ids.numpy()),
        top_probs=_np(top_lp.exp()),
        target_logprobs=_np(target_lp),
        last_logits=_np(logits[-1]),
        last_probs=_np(last_probs),
    )


def _char_end(text: str, byte_end: int) -> int:
    return len(text.encode("utf-8")[:byte_end].decode("utf-8", errors="ignore"))
