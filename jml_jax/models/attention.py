"""JML's cross-modal multi-head attention block (original-jml-code.md §2.1).

The original builds every attention block as ``MultiHeadAttention(8, D, D, D)``:
eight heads that are each as wide as the model (d_k = d_v = D, not D/8),
projections without bias, scores scaled by 1/sqrt(D), dropout on the
probabilities and on the output projection, then ``LayerNorm(query + out)``
with torch's eps 1e-5. Nothing is masked in the original; ``key_mask`` is the
opt-in fix.

Parameter tree (mirrors the PyTorch names, see original-checkpoint-layout.md §5)::

    w_qs/kernel  [D, heads, D]     (torch w_qs.weight [heads*D, D] -> .T.reshape)
    w_ks/kernel  [D, heads, D]
    w_vs/kernel  [D, heads, D]
    fc/kernel    [heads, D, D]     (torch fc.weight [D, heads*D] -> .T.reshape)
    layer_norm/scale, layer_norm/bias  [D]
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jml_jax.axes import EMBED, HEADS, KV
from jml_jax.facts import MASK_VALUE  # the original's additive mask value, as BERT's (§11)
from jml_jax.models import layers


class CrossModalAttention(nn.Module):
    """``LayerNorm(q + Dropout(fc(concat_h softmax(q_h k_h^T / sqrt(D)) v_h)))``.

    Attributes:
      num_heads: number of heads (8 in the original, a literal there).
      head_dim: width of each head; ``None`` = the model width D (the original).
      dropout_rate: dropout on the attention probabilities and the output.
      dtype: compute dtype; parameters are float32, softmax and LayerNorm run
        in float32.
    """

    num_heads: int = 8
    head_dim: int | None = None
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query, key_value, key_mask=None, *, deterministic: bool = True):
        """Attends from ``query`` [B, Lq, D] to ``key_value`` [B, Lk, D].

        Args:
          key_mask: optional [B, Lk] (1 = attend). ``None`` reproduces the
            original, which masks nothing.

        Returns:
          (output [B, Lq, D], probabilities [B, heads, Lq, Lk] in float32).
        """
        width = query.shape[-1]
        head_dim = self.head_dim or width
        proj = lambda name: layers.dense_general(  # noqa: E731
            (self.num_heads, head_dim), (EMBED, HEADS, KV), name, self.dtype
        )
        q = proj("w_qs")(query)  # [B, Lq, heads, dk]
        k = proj("w_ks")(key_value)  # [B, Lk, heads, dk]
        v = proj("w_vs")(key_value)  # [B, Lk, heads, dv]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        scores = scores / jnp.sqrt(jnp.float32(head_dim))
        if key_mask is not None:
            scores = scores + (1.0 - key_mask[:, None, None, :].astype(jnp.float32)) * MASK_VALUE
        probs = nn.softmax(scores, axis=-1)
        dropped = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(self.dtype), v)
        out = layers.dense_general(
            width, (HEADS, KV, EMBED), "fc", self.dtype, axis=(-2, -1)
        )(context)
        out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        # torch nn.LayerNorm default eps (§2.1), in float32.
        normed = layers.layer_norm(1e-5, "layer_norm")(
            query.astype(jnp.float32) + out.astype(jnp.float32)
        )
        return normed.astype(self.dtype), probs
