"""Span gathering and attention pooling weights for MASC (original-jml-code.md §4).

Pure functions of arrays. The original packs the valid tokens of *all rows of
the batch* into one array (by ``input_mask``), offsets each row's spans by the
number of valid tokens before it, and lets every span read ``JR`` consecutive
packed rows (JR = the widest span of the call), clamping indices to the last
packed row; positions beyond a span's own width get -10000 added to their
score. A span that runs past the end of its row therefore reads into the next
row (fixtures README §1.5). ``packing='batch'`` reproduces that bit for bit;
``packing='row'`` clamps inside the row instead, which is identical for every
span that lies inside its row (all spans real training and decoding produce)
and keeps the gather local to each row, so it shards over the batch.

Instead of materialising ``[B, M, JR, D]`` gathered vectors, the pooling is
expressed as a weight matrix over token positions and applied with one
matmul: ``u = weights @ tokens``. With a static window ``JR = L`` the extra
masked positions contribute ``exp(-10000 + ...) = 0`` exactly, so the result
equals the original's dynamic JR.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_VALUE = -10000.0
PACKINGS = ("batch", "row")


def span_window_indices(input_mask, span_starts, span_ends, packing: str = "batch", window=None):
    """Token indices each span reads, and which of them lie inside the span.

    Args:
      input_mask: [B, L] 1 on real tokens.
      span_starts, span_ends: [B, M] inclusive feature positions.
      packing: 'batch' (original, indices into the B*L flattened positions)
        or 'row' (indices into the row's own L positions).
      window: static window length JR (default L).

    Returns:
      (indices [B, M, JR] int32, inside [B, M, JR] bool). For 'batch' the
      indices address the flattened [B*L] positions; for 'row' the row's [L].
    """
    if packing not in PACKINGS:
        raise ValueError(f"unknown span packing {packing!r}; valid: {PACKINGS}")
    batch, length = input_mask.shape
    window = length if window is None else window
    mask = input_mask.astype(jnp.int32)
    k = jnp.arange(window, dtype=jnp.int32)
    width = span_ends - span_starts + 1  # [B, M]
    inside = k[None, None, :] < width[:, :, None]
    if packing == "row":
        last = jnp.maximum(mask.sum(axis=1) - 1, 0)  # [B]
        idx = jnp.minimum(span_starts[:, :, None] + k, last[:, None, None])
        return idx.astype(jnp.int32), inside
    flat = mask.reshape(-1)
    total = flat.sum()
    # packed position p -> flat position: valid positions first, in order.
    packed_to_flat = jnp.argsort(1 - flat, stable=True).astype(jnp.int32)
    offsets = jnp.cumsum(mask.sum(axis=1)) - mask.sum(axis=1)  # valid tokens before row b
    packed = offsets[:, None, None] + span_starts[:, :, None] + k
    packed = jnp.minimum(packed, jnp.maximum(total - 1, 0))
    return packed_to_flat[packed], inside


def span_pool_weights(scores, input_mask, span_starts, span_ends, packing: str = "batch", window=None):
    """Attention-pooling weights of every span over token positions.

    Args:
      scores: [B, L] per-token scores (``unary_affine`` output, §4 step 2).

    Returns:
      'batch': [B, M, B*L]; 'row': [B, M, L]. float32 weights whose rows sum
      to 1, so ``u = einsum(weights, tokens)`` is the pooled span vector.
    """
    batch, length = input_mask.shape
    idx, inside = span_window_indices(input_mask, span_starts, span_ends, packing, window)
    scores = scores.astype(jnp.float32)
    if packing == "batch":
        gathered = scores.reshape(-1)[idx]
        n_pos = batch * length
    else:
        gathered = jnp.take_along_axis(scores[:, None, :], idx, axis=2)
        n_pos = length
    gathered = gathered + jnp.where(inside, 0.0, MASK_VALUE)
    attn = jax.nn.softmax(gathered, axis=-1)  # [B, M, JR]
    # Scatter the window weights onto positions (a clamped index may repeat:
    # the original counts it once per window slot, and so does the add).
    n_spans = idx.shape[1]
    rows = jnp.arange(batch)[:, None, None]
    slots = jnp.arange(n_spans)[None, :, None]
    weights = jnp.zeros((batch, n_spans, n_pos), jnp.float32)
    return weights.at[rows, slots, idx].add(attn)


def pool_spans(tokens, weights, packing: str = "batch"):
    """``tokens`` [B, L, D] pooled by ``weights`` from `span_pool_weights` -> [B, M, D]."""
    if packing == "batch":
        flat = tokens.reshape(-1, tokens.shape[-1])
        return jnp.einsum("bmp,pd->bmd", weights.astype(tokens.dtype), flat)
    return jnp.einsum("bmp,bpd->bmd", weights.astype(tokens.dtype), tokens)
