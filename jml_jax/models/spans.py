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

Groups. The original's batch is a mini-batch of 4 sentences (§5.4); a one-pass
step (`jml_jax.steps.make_train_step`) runs G of them at once as ``groups=G``
contiguous groups of B/G rows, and ``packing='batch'`` then packs each group on
its own, exactly as G separate calls would (a span never reads into another
group). With ``groups=1`` the whole batch is one pack, as before.

Instead of materialising ``[B, M, JR, D]`` gathered vectors, the pooling is
expressed as a weight matrix over token positions and applied with one
matmul: ``u = weights @ tokens``. With a static window ``JR = L`` the extra
masked positions contribute ``exp(-10000 + ...) = 0`` exactly, so the result
equals the original's dynamic JR.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jml_jax.facts import MASK_VALUE

PACKINGS = ("batch", "row")


def _check_groups(batch: int, groups: int) -> int:
    if groups < 1 or batch % groups:
        raise ValueError(f"a batch of {batch} rows does not split into {groups} span-packing groups")
    return batch // groups


def _packed_indices(mask, span_starts, span_ends, k):
    """One pack ('batch' packing of one group): mask [b, L], spans [b, M] ->
    indices [b, M, JR] into the group's flattened [b*L] positions."""
    flat = mask.reshape(-1)
    total = flat.sum()
    # packed position p -> flat position: valid positions first, in order.
    packed_to_flat = jnp.argsort(1 - flat, stable=True).astype(jnp.int32)
    offsets = jnp.cumsum(mask.sum(axis=1)) - mask.sum(axis=1)  # valid tokens before row b
    packed = offsets[:, None, None] + span_starts[:, :, None] + k
    packed = jnp.minimum(packed, jnp.maximum(total - 1, 0))
    return packed_to_flat[packed]


def span_window_indices(input_mask, span_starts, span_ends, packing: str = "batch", window=None,
                        groups: int = 1):
    """Token indices each span reads, and which of them lie inside the span.

    Args:
      input_mask: [B, L] 1 on real tokens.
      span_starts, span_ends: [B, M] inclusive feature positions.
      packing: 'batch' (original, indices into the flattened positions of the
        row's pack) or 'row' (indices into the row's own L positions).
      window: static window length JR (default L).
      groups: 'batch' packing packs each of ``groups`` contiguous groups of
        B/groups rows on its own (ignored by 'row').

    Returns:
      (indices [B, M, JR] int32, inside [B, M, JR] bool). For 'batch' the
      indices address the flattened [(B/groups)*L] positions of the row's
      group ([B*L] with one group); for 'row' the row's [L].
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
    rows = _check_groups(batch, groups)
    grouped = lambda x: x.reshape((groups, rows) + x.shape[1:])  # noqa: E731
    idx = jax.vmap(_packed_indices, in_axes=(0, 0, 0, None))(
        grouped(mask), grouped(span_starts), grouped(span_ends), k
    )
    return idx.reshape((batch,) + idx.shape[2:]), inside


def _scatter_window(attn, idx, n_pos):
    """attn, idx [b, M, JR] -> weights [b, M, n_pos] (a clamped index may
    repeat: the original counts it once per window slot, and so does the add)."""
    batch, n_spans = idx.shape[:2]
    rows = jnp.arange(batch)[:, None, None]
    slots = jnp.arange(n_spans)[None, :, None]
    weights = jnp.zeros((batch, n_spans, n_pos), jnp.float32)
    return weights.at[rows, slots, idx].add(attn)


def span_pool_weights(scores, input_mask, span_starts, span_ends, packing: str = "batch", window=None,
                      groups: int = 1):
    """Attention-pooling weights of every span over token positions.

    Args:
      scores: [B, L] per-token scores (``unary_affine`` output, §4 step 2).
      groups: see `span_window_indices`.

    Returns:
      'batch': [B, M, (B/groups)*L] over the positions of the row's group;
      'row': [B, M, L]. float32 weights whose rows sum to 1, so
      ``pool_spans(tokens, weights, packing, groups)`` is the pooled span vector.
    """
    batch, length = input_mask.shape
    idx, inside = span_window_indices(input_mask, span_starts, span_ends, packing, window, groups)
    scores = scores.astype(jnp.float32)
    bias = jnp.where(inside, 0.0, MASK_VALUE)
    if packing == "row":
        gathered = jnp.take_along_axis(scores[:, None, :], idx, axis=2) + bias
        return _scatter_window(jax.nn.softmax(gathered, axis=-1), idx, length)
    rows = _check_groups(batch, groups)
    n_pos = rows * length

    def one_group(group_scores, group_idx, group_bias):
        gathered = group_scores.reshape(-1)[group_idx] + group_bias
        attn = jax.nn.softmax(gathered, axis=-1)  # [b, M, JR]
        return _scatter_window(attn, group_idx, n_pos)

    grouped = lambda x: x.reshape((groups, rows) + x.shape[1:])  # noqa: E731
    weights = jax.vmap(one_group)(grouped(scores), grouped(idx), grouped(bias))
    return weights.reshape((batch,) + weights.shape[2:])


def pool_spans(tokens, weights, packing: str = "batch", groups: int = 1):
    """``tokens`` [B, L, D] pooled by ``weights`` from `span_pool_weights`
    (made with the same ``packing`` and ``groups``) -> [B, M, D]."""
    if packing == "row":
        return jnp.einsum("bmp,bpd->bmd", weights.astype(tokens.dtype), tokens)
    batch, length, width = tokens.shape
    rows = _check_groups(batch, groups)
    flat = tokens.reshape(groups, rows * length, width)
    w = weights.astype(tokens.dtype).reshape((groups, rows) + weights.shape[1:])
    return jnp.einsum("gbmp,gpd->gbmd", w, flat).reshape(batch, weights.shape[1], width)
