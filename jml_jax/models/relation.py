"""The text-image relation module (original-jml-code.md §2.2) and its gate (§2.5).

Parameter tree (original names, original-checkpoint-layout.md §4)::

    pre_resnet/...        its own ResNet (ResNet-152 in the original)
    aling_img_1           Dense 2048 -> D   (image regions I)
    bert/...              its own BERT (T = last layer)
    img2txt, txt2img, txt2txt, img2img   CrossModalAttention blocks
    aaali                 Dense 4D -> D     (input tanh([a1; a2; a3; a4]))
    pair_preject          Dense D -> 4      (read as [B, 2, 2]: R then V)

Outputs ``logits [B, 2, 2]``: row 0 = "text is represented" (R), row 1 =
"image adds" (V); class 1 of each is the positive answer.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jml_jax.axes import EMBED, IMG_EMBED, MLP
from jml_jax.facts import GRID_CHANNELS, IMAGE_REGIONS
from jml_jax.models import layers
from jml_jax.models.attention import CrossModalAttention
from jml_jax.models.bert import BertConfig, BertModel
from jml_jax.models.resnet import ResNet

GATES = ("soft", "hard", "none")


def batch_max_positions(input_mask, group: int):
    """[B, L] int32: 1 at the positions before the longest row of each row's
    group of ``group`` consecutive rows, 0 after.

    The original pads each TRC batch to its longest tweet (§2.3) and masks
    nothing after that (§2.2 step 3, §10.6): the relation module's means and
    attention keys cover exactly these positions. A call with fewer than
    ``group`` rows (the init's one row) is one group. Row lengths are read from
    ``input_mask`` (id != 0 in the original), so padding rows of an eval batch
    need an all-zero mask (data_pipeline/pipeline.py does that under
    data.trc_pad_to_batch_max).
    """
    b, length = input_mask.shape
    g = min(group, b)
    if b % g:
        raise ValueError(f"batch of {b} rows is not a whole number of TRC batches of {group}")
    lengths = jnp.sum((input_mask != 0).astype(jnp.int32), axis=1)
    longest = jnp.repeat(jnp.max(lengths.reshape(b // g, g), axis=1), g)
    return (jnp.arange(length)[None, :] < longest[:, None]).astype(jnp.int32)


def masked_mean(x, mask=None):
    """Mean over axis 1 of x [B, N, D]; with ``mask`` [B, N] only valid rows."""
    if mask is None:
        return jnp.mean(x.astype(jnp.float32), axis=1)
    m = mask.astype(jnp.float32)[..., None]
    return jnp.sum(x.astype(jnp.float32) * m, axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


class RelationModule(nn.Module):
    """BERT + ResNet + four attention blocks -> two 2-way relations (§2.2).

    Attributes:
      bert: the relation BERT's config (the same shape as the main BERT in the
        original).
      resnet_depth, resnet_blocks, resnet_width: the relation ResNet.
      mask_text: the fix switch: mask text padding as attention keys and in
        the means over text rows (the original masks nothing, §2.2 step 3).
      pad_group: stage one only. 0 (default): text padded to the fixed length
        L, padding unmasked, as the joint model feeds the module (§2.5). N > 0:
        the text as the original's TRC loader pads it, to the longest row of
        each batch of N consecutive rows, unmasked (§2.3, §10.6): the means
        and attention keys cover the first max-length positions of the batch,
        which equals trimming the batch to that length (BERT masks its own
        padding keys, so its states there do not depend on L). Exact without
        a new shape per batch. Ignored when mask_text is on.
    """

    bert: BertConfig
    resnet_depth: int = 152
    resnet_blocks: tuple[int, ...] | None = None
    resnet_width: int = 64
    num_heads: int = 8
    dropout_rate: float = 0.1
    mask_text: bool = False
    pad_group: int = 0
    use_images: bool = True
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, input_mask, images=None, *, deterministic: bool = True, train: bool = False):
        """Args:
          input_ids, input_mask: [B, L].
          images: normalised [B, H, W, 3] (224x224 gives 49 regions); ignored
            (zeros used) when ``use_images`` is False.
          deterministic: no dropout when True.
          train: BatchNorm of the relation ResNet in training mode.

        Returns:
          logits [B, 2, 2] float32.
        """
        width = self.bert.hidden_size
        text, _ = BertModel(
            self.bert, dtype=self.dtype, remat=self.remat, add_pooler=False, name="bert"
        )(input_ids, input_mask, jnp.zeros_like(input_ids), deterministic=deterministic)
        grid = None
        if self.use_images:
            grid, _ = ResNet(
                depth=self.resnet_depth,
                blocks=self.resnet_blocks,
                width=self.resnet_width,
                dtype=self.dtype,
                name="pre_resnet",
            )(images, train=train)
            self.sow("intermediates", "rel_resnet_grid", grid)
        image = layers.dense(width, (IMG_EMBED, EMBED), "aling_img_1", self.dtype)(
            grid if grid is not None else jnp.zeros(input_ids.shape[:1] + (IMAGE_REGIONS, GRID_CHANNELS), self.dtype)
        )
        key_mask = input_mask if self.mask_text else None
        if key_mask is None and self.pad_group:
            key_mask = batch_max_positions(input_mask, self.pad_group)
        block = lambda name: CrossModalAttention(  # noqa: E731
            self.num_heads, None, self.dropout_rate, self.dtype, name=name
        )
        a1, _ = block("img2txt")(image, text, key_mask, deterministic=deterministic)
        a2, _ = block("txt2img")(text, image, deterministic=deterministic)
        a3, _ = block("txt2txt")(text, text, key_mask, deterministic=deterministic)
        a4, _ = block("img2img")(image, image, deterministic=deterministic)
        for name, value in (("img2txt", a1), ("txt2img", a2), ("txt2txt", a3), ("img2img", a4)):
            self.sow("intermediates", f"rel_{name}_out", value)
        pooled = jnp.concatenate(
            [masked_mean(a1), masked_mean(a2, key_mask), masked_mean(a3, key_mask), masked_mean(a4)],
            axis=-1,
        )
        hidden = layers.dense(width, (MLP, EMBED), "aaali", self.dtype)(jnp.tanh(pooled))
        self.sow("intermediates", "rel_aaali_out", hidden)
        logits = layers.dense(4, (EMBED, None), "pair_preject", self.dtype)(hidden)
        return logits.astype(jnp.float32).reshape(-1, 2, 2)


def relation_probabilities(logits):
    """[B, 2, 2] logits -> [B, 2] = [P(text represented), P(image adds)] (§2.5)."""
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


def gate_value(p_image_adds, gate: str):
    """The scalar per example that multiplies the projected image grid (§2.5).

    'soft' = P(image adds) (the original), 'hard' = 1[P > 0.5] (paper Table 7),
    'none' = 1 (the "without relation" ablation).
    """
    if gate == "soft":
        return p_image_adds
    if gate == "hard":
        return (p_image_adds > 0.5).astype(jnp.float32)
    if gate == "none":
        return jnp.ones_like(p_image_adds)
    raise ValueError(f"unknown relation gate {gate!r}; valid: {GATES}")
