"""The two JML task heads: MATE span boundaries (§3) and MASC polarity (§4).

Parameter names mirror the original module names so the checkpoint converter
is a table (original-checkpoint-layout.md §3.2, §3.4)::

    mate/imgLa2text/...            CrossModalAttention (q = text, kv = image)
    mate/align_imgLA_and_text      Dense 2D -> D   (input [H; C])
    mate/binary_affine             Dense D -> 2    (0 = start, 1 = end)
    masc/unary_affine              Dense D -> 1    (span attention score)
    masc/dense                     Dense D -> D    (then tanh, dropout)
    masc/res2span/...              CrossModalAttention (q = spans, kv = image)
    masc/align_all_1               Dense 2D -> 2D  (input [u'; Z])
    masc/align_all_2               Dense 2D -> D   (no nonlinearity in between)
    masc/classifier                Dense D -> 4    (0 other, 1 neu, 2 pos, 3 neg)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jml_jax.axes import EMBED, MLP
from jml_jax.models import layers, spans
from jml_jax.models.attention import CrossModalAttention


class MateHead(nn.Module):
    """Span-boundary logits from text states and gated image regions (§3)."""

    num_heads: int = 8
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, text, image, *, deterministic: bool = True):
        """Args: text H [B, L, D]; image V [B, R, D] (already gated).

        Returns:
          (start_logits [B, L], end_logits [B, L], S [B, L, D]); S is the token
          representation MASC consumes. Nothing is masked (§3, §10.11).
        """
        width = text.shape[-1]
        cross, _ = CrossModalAttention(
            self.num_heads, None, self.dropout_rate, self.dtype, name="imgLa2text"
        )(text, image, deterministic=deterministic)
        self.sow("intermediates", "imgLa2text_out", cross)
        fused = layers.dense(width, (MLP, EMBED), "align_imgLA_and_text", self.dtype)(
            jnp.concatenate([text.astype(self.dtype), cross], axis=-1)
        )
        fused = nn.Dropout(self.dropout_rate)(fused, deterministic=deterministic)
        logits = layers.dense(2, (EMBED, None), "binary_affine", self.dtype)(fused)
        logits = logits.astype(jnp.float32)
        return logits[..., 0], logits[..., 1], fused


class MascHead(nn.Module):
    """Polarity logits of spans pooled from S, attending to the image (§4)."""

    num_heads: int = 8
    num_polarities: int = 4
    dropout_rate: float = 0.1
    packing: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sequence, input_mask, span_starts, span_ends, image, *, deterministic: bool = True,
                 groups: int = 1):
        """Args:
          sequence: S [B, L, D] from `MateHead`.
          input_mask: [B, L].
          span_starts, span_ends: [B, M] inclusive feature positions; padding
            slots are (0, 0) (they pool [CLS] and get logits like any slot).
          image: gated image regions [B, R, D].
          groups: 'batch' span packing packs each of ``groups`` contiguous
            groups of rows on its own (models/spans.py); everything else in
            the head is per row.

        Returns:
          logits [B, M, num_polarities] in float32.
        """
        width = sequence.shape[-1]
        scores = layers.dense(1, (EMBED, None), "unary_affine", self.dtype)(sequence)[..., 0]
        weights = spans.span_pool_weights(
            scores, input_mask, span_starts, span_ends, packing=self.packing, groups=groups
        )
        pooled = spans.pool_spans(
            sequence.astype(self.dtype), weights, packing=self.packing, groups=groups
        )
        self.sow("intermediates", "dense_in", pooled)
        u = jnp.tanh(layers.dense(width, (EMBED, MLP), "dense", self.dtype)(pooled))
        u = nn.Dropout(self.dropout_rate)(u, deterministic=deterministic)
        z, _ = CrossModalAttention(
            self.num_heads, None, self.dropout_rate, self.dtype, name="res2span"
        )(u, image, deterministic=deterministic)
        self.sow("intermediates", "res2span_out", z)
        f = layers.dense(2 * width, (EMBED, MLP), "align_all_1", self.dtype)(
            jnp.concatenate([u, z], axis=-1)
        )
        f = nn.Dropout(self.dropout_rate)(f, deterministic=deterministic)
        f = layers.dense(width, (MLP, EMBED), "align_all_2", self.dtype)(f)
        self.sow("intermediates", "classifier_in", f)
        logits = layers.dense(self.num_polarities, (EMBED, None), "classifier", self.dtype)(f)
        return logits.astype(jnp.float32)
