"""Attention: the mask from positions and segment ids, and the selectable implementation.

The mask is causal by position and block-diagonal by segment: a query attends to a key when
both are in the same (non-zero) segment and the key's position is not after the query's. This
one rule covers plain rows, packed rows (positions restart per segment) and KV-cache decoding
(empty cache slots have segment 0).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp


def make_mask(q_positions, q_segments, kv_positions, kv_segments) -> jax.Array:
    """Boolean mask [B, Lq, Lk]: same non-zero segment and key position <= query position."""
    same_segment = (q_segments[:, :, None] == kv_segments[:, None, :]) & (kv_segments[:, None, :] != 0)
    causal = kv_positions[:, None, :] <= q_positions[:, :, None]
    return same_segment & causal


def _xla_attention(q, k, v, mask):
    """Grouped-query attention as two einsums, softmax in float32."""
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    q = q.reshape(batch, q_len, kv_heads, groups, head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim ** -0.5)
    big_negative = jnp.finfo(jnp.float32).min
    scores = jnp.where(mask[:, None, None, :, :], scores, big_negative)
    probs = jax.nn.softmax(scores, axis=-1)
    # A fully masked row (a padding query) would average every key; zero it instead.
    probs = jnp.where(mask.any(axis=-1)[:, None, None, :, None], probs, 0.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v)
    return out.reshape(batch, q_len, heads, head_dim)


_warned_cudnn_fallback = False


def attend(q, k, v, mask, *, impl: str = "xla"):
    """Attention of q [B, Lq, H, hd] over k, v [B, Lk, KV, hd] under ``mask`` [B, Lq, Lk].

    ``impl="cudnn"`` uses ``jax.nn.dot_product_attention(implementation="cudnn")`` (fused kernel,
    GPU only, bf16/fp16) with the mask passed as a boolean bias; where cuDNN cannot run (not a
    GPU, float32) it falls back to the XLA path with a one-time warning.
    """
    global _warned_cudnn_fallback
    if impl == "cudnn":
        on_gpu = jax.default_backend() == "gpu"
        half = q.dtype in (jnp.bfloat16, jnp.float16)
        if on_gpu and half:
            return jax.nn.dot_product_attention(
                q, k, v, mask=mask[:, None, :, :], implementation="cudnn"
            )
        if not _warned_cudnn_fallback:
            warnings.warn(
                "attention_impl='cudnn' needs a GPU and bf16/fp16 compute; using the XLA attention",
                stacklevel=2,
            )
            _warned_cudnn_fallback = True
    return _xla_attention(q, k, v, mask)
