"""BERT encoder in Flax linen, numerically matching PyTorch BERT (§11).

The text encoder of JML is bert-base-uncased (§11 of original-jml-code.md):
post-LayerNorm encoder layers, erf GELU, LayerNorm eps 1e-12, additive
attention mask ``(1 - mask) * -10000``, only the last layer used. The relation
module holds a second copy with the same config (§2.2).

Parameter tree (inside the ``'params'`` collection). Names mirror the PyTorch
state dict so that `jml_jax.convert.bert` is a table plus Linear transposes::

    embeddings/word_embeddings/embedding            [vocab, H]        ('vocab', 'embed')
    embeddings/position_embeddings/embedding        [positions, H]    (None, 'embed')
    embeddings/token_type_embeddings/embedding      [types, H]        (None, 'embed')
    embeddings/LayerNorm/{scale,bias}               [H]               ('norm',)
    encoder/layer_{i}/attention/self/{query,key,value}/kernel [H, H]  ('embed', 'heads')
    encoder/layer_{i}/attention/self/{query,key,value}/bias   [H]     ('heads',)
    encoder/layer_{i}/attention/output/dense/kernel [H, H]            ('heads', 'embed')
    encoder/layer_{i}/attention/output/dense/bias   [H]               ('embed',)
    encoder/layer_{i}/attention/output/LayerNorm/{scale,bias} [H]     ('norm',)
    encoder/layer_{i}/intermediate/dense/kernel     [H, FFN]          ('embed', 'mlp')
    encoder/layer_{i}/intermediate/dense/bias       [FFN]             ('mlp',)
    encoder/layer_{i}/output/dense/kernel           [FFN, H]          ('mlp', 'embed')
    encoder/layer_{i}/output/dense/bias             [H]               ('embed',)
    encoder/layer_{i}/output/LayerNorm/{scale,bias} [H]               ('norm',)
    pooler/dense/{kernel,bias}                      [H, H], [H]       ('embed', None), (None,)
                                                    (only with add_pooler=True)

Kernels are ``[in, out]`` (PyTorch Linear weights are ``[out, in]``).
The position and token-type tables carry no 'vocab' name: they are small and
their first dimension (e.g. 2 token types) would not divide a mesh axis.

Logical axis names: every parameter is created through
``nn.with_logical_partitioning``, so ``model.init`` returns
``nn.LogicallyPartitioned`` boxes. Callers take ``nn.get_partition_spec(v)``
for shardings and ``flax.linen.meta.unbox(v)`` for plain arrays; ``apply``
accepts either.

Precision: parameters are always float32 (``param_dtype``); ``dtype`` is the
compute dtype of matmuls. LayerNorm, the attention softmax and the mask are
computed in float32 even when ``dtype`` is bfloat16.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

# Logical axis names (jml_jax/axes.py), mapped to mesh axes by the sharding rules.
from jml_jax.axes import BATCH, EMBED, HEADS, LENGTH, MLP, NORM, VOCAB
from jml_jax.facts import MASK_VALUE
from jml_jax.sharding import constrain

# Activation layouts, pinned while a step is traced with rules
# (`jml_jax.sharding.constrain`; a no-op otherwise): hidden states split over
# the batch axes only, the q/k/v projections over heads and the FFN width over
# ``tensor``, as the kernels they come from (Megatron-style).
HIDDEN = (BATCH, LENGTH, EMBED)

# MASK_VALUE (jml_jax/facts.py) is the original extended attention mask value
# (§11); transformers uses finfo.min. Both give exp(.) == 0 in float32, so
# outputs agree at every position.


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (names as in HF ``config.json``)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BertConfig":
        """Builds a config from a dict; extra keys are ignored, missing ones raise."""
        names = [f.name for f in dataclasses.fields(cls)]
        required = [
            f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"BERT config lacks required keys: {', '.join(missing)}")
        return cls(**{n: d[n] for n in names if n in d})

    @classmethod
    def from_hf_json(cls, path_or_dir: str | pathlib.Path) -> "BertConfig":
        """Reads an HF ``config.json`` (or the folder that holds it).

        Raises ValueError for settings this implementation does not support
        (an activation other than erf GELU, relative position embeddings).
        """
        path = pathlib.Path(path_or_dir)
        if path.is_dir():
            path = path / "config.json"
        with open(path) as f:
            d = json.load(f)
        act = d.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"{path}: hidden_act {act!r} unsupported (only 'gelu', erf form)")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(
                f"{path}: position_embedding_type {pos!r} unsupported (only 'absolute')"
            )
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BERT_PRESETS: dict[str, BertConfig] = {
    "bert-base": BertConfig(30522, 768, 12, 12, 3072, 512, 2),
    "minilm-l6": BertConfig(30522, 384, 6, 12, 1536, 512, 2),
    # The BERT of the parity fixtures (fixtures/README.md §1.1).
    "tiny": BertConfig(100, 32, 2, 2, 64, 64, 2),
}


def get_bert_config(name: str) -> BertConfig:
    """Returns the preset called ``name``; ValueError lists the valid names."""
    try:
        return BERT_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown BERT config {name!r}; valid names: {', '.join(sorted(BERT_PRESETS))}"
        ) from None


def _init(fn, names):
    return nn.with_logical_partitioning(fn, names)


_KERNEL = nn.initializers.normal(stddev=0.02)  # BERT initializer_range
_ZEROS = nn.initializers.zeros_init()
_ONES = nn.initializers.ones_init()


def _dense(features, names, dtype, name):
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_init(_KERNEL, names),
        bias_init=_init(_ZEROS, (names[1],)),
        name=name,
    )


def _layer_norm(x, eps, dtype, name):
    """LayerNorm in float32, result cast to the compute dtype. x: [..., H]."""
    y = nn.LayerNorm(
        epsilon=eps,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scale_init=_init(_ONES, (NORM,)),
        bias_init=_init(_ZEROS, (NORM,)),
        name=name,
    )(x.astype(jnp.float32))
    return y.astype(dtype)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, *, deterministic: bool):
        """input_ids, token_type_ids: [B, L] int -> [B, L, H] in ``dtype``."""
        cfg = self.config
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings "
                f"{cfg.max_position_embeddings}"
            )

        def embed(n, names, name):
            return nn.Embed(
                n, cfg.hidden_size, dtype=jnp.float32, param_dtype=jnp.float32,
                embedding_init=_init(_KERNEL, names), name=name,
            )

        x = embed(cfg.vocab_size, (VOCAB, EMBED), "word_embeddings")(input_ids)
        pos = embed(cfg.max_position_embeddings, (None, EMBED), "position_embeddings")(
            jnp.arange(length)[None, :]
        )
        tok = embed(cfg.type_vocab_size, (None, EMBED), "token_type_embeddings")(
            token_type_ids
        )
        # Sum in float32, as PyTorch does, before the float32 LayerNorm.
        x = _layer_norm(x + pos + tok, cfg.layer_norm_eps, self.dtype, "LayerNorm")
        return constrain(nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic), HIDDEN)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (q/k/v projections only)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, *, deterministic: bool):
        """x: [B, L, H]; mask_bias: [B, 1, 1, L] float32 -> context [B, L, H]."""
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads
        b, length, _ = x.shape

        def proj(name):
            y = _dense(cfg.hidden_size, (EMBED, HEADS), self.dtype, name)(x)
            return constrain(y, (BATCH, LENGTH, HEADS)).reshape(b, length, heads, head_dim)

        q, k, v = proj("query"), proj("key"), proj("value")
        # Scores accumulate and stay in float32 for the float32 softmax.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores / jnp.sqrt(jnp.float32(head_dim)) + mask_bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(
            probs, deterministic=deterministic
        )
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        return ctx.reshape(b, length, cfg.hidden_size)


class BertOutputBlock(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm; PyTorch's *Output modules."""

    config: BertConfig
    kernel_names: tuple
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, residual, *, deterministic: bool):
        """h: [B, L, in]; residual: [B, L, H] -> [B, L, H]."""
        cfg = self.config
        y = _dense(cfg.hidden_size, self.kernel_names, self.dtype, "dense")(h)
        y = nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic)
        # Residual sum in float32, ahead of the float32 LayerNorm.
        y = y.astype(jnp.float32) + residual.astype(jnp.float32)
        return constrain(_layer_norm(y, cfg.layer_norm_eps, self.dtype, "LayerNorm"), HIDDEN)


class BertAttention(nn.Module):
    """Self-attention, output dense, dropout, residual, LayerNorm (post-LN)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, *, deterministic: bool):
        """x: [B, L, H] -> [B, L, H]."""
        cfg = self.config
        ctx = BertSelfAttention(cfg, self.dtype, name="self")(
            x, mask_bias, deterministic=deterministic
        )
        return BertOutputBlock(cfg, (HEADS, EMBED), self.dtype, name="output")(
            ctx, x, deterministic=deterministic
        )


class _Intermediate(nn.Module):
    """FFN up-projection with erf GELU: [B, L, H] -> [B, L, FFN]."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = _dense(self.config.intermediate_size, (EMBED, MLP), self.dtype, "dense")(x)
        return constrain(jax.nn.gelu(y, approximate=False), (BATCH, LENGTH, MLP))


class BertLayer(nn.Module):
    """One post-LN encoder layer: attention block, then erf-GELU FFN block."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool = True):
        """x: [B, L, H]; mask_bias: [B, 1, 1, L] -> [B, L, H].

        ``deterministic`` is positional so that nn.remat can mark it static.
        """
        cfg = self.config
        a = BertAttention(cfg, self.dtype, name="attention")(
            x, mask_bias, deterministic=deterministic
        )
        inter = _Intermediate(cfg, self.dtype, name="intermediate")(a)
        return BertOutputBlock(cfg, (MLP, EMBED), self.dtype, name="output")(
            inter, a, deterministic=deterministic
        )


class BertEncoder(nn.Module):
    """Stack of ``num_hidden_layers`` BertLayers named layer_0 .. layer_{n-1}."""

    config: BertConfig
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool = True):
        """x: [B, L, H] -> [B, L, H]."""
        # static_argnums counts `self` as argument 0: (self, x, mask_bias, deterministic).
        layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if self.remat else BertLayer
        for i in range(self.config.num_hidden_layers):
            x = layer_cls(self.config, self.dtype, name=f"layer_{i}")(x, mask_bias, deterministic)
        return x


class _Pooler(nn.Module):
    """tanh(dense(h_[CLS])): [B, H] -> [B, H]."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cls_hidden):
        y = _dense(self.config.hidden_size, (EMBED, None), self.dtype, "dense")(cls_hidden)
        return jnp.tanh(y)


class BertModel(nn.Module):
    """BERT encoder with optional pooler.

    Attributes:
      config: the architecture.
      dtype: compute dtype (float32 or bfloat16); parameters stay float32.
      remat: rematerialise each encoder layer in the backward pass (nn.remat).
      add_pooler: build the tanh pooler on [CLS] (JML runs it but discards its
        output, §3.1 of original-checkpoint-layout.md).
    """

    config: BertConfig
    dtype: Any = jnp.float32
    remat: bool = False
    add_pooler: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *,
                 deterministic: bool = True):
        """Encodes a batch.

        Args:
          input_ids: [B, L] int token ids.
          attention_mask: [B, L], 1 on real tokens and 0 on padding.
          token_type_ids: [B, L] int segment ids (default all 0).
          deterministic: True disables dropout; False needs a 'dropout' rng.

        Returns:
          (last_hidden [B, L, H], pooled [B, H] or None when add_pooler=False),
          both in ``dtype``.
        """
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {attention_mask.shape} != input_ids shape "
                f"{input_ids.shape}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(cfg, self.dtype, name="embeddings")(
            input_ids, token_type_ids, deterministic=deterministic
        )
        # Extended attention mask as in the original (§11): (1 - mask) * -10000,
        # float32, broadcast over heads and query positions.
        mask_bias = (1.0 - attention_mask.astype(jnp.float32))[:, None, None, :] * MASK_VALUE
        x = BertEncoder(cfg, self.dtype, self.remat, name="encoder")(
            x, mask_bias, deterministic
        )
        pooled = None
        if self.add_pooler:
            pooled = _Pooler(cfg, self.dtype, name="pooler")(x[:, 0])
        return x, pooled
