"""From an experiment config to a model and its init function (no weights: jml_jax/weights.py).

Names in configs are resolved through explicit tables that fail with the list
of valid names (`jml_jax.models.bert.get_bert_config`). The relation module of
stage one comes from the joint model's own builder
(`jml_jax.models.jml.build_relation_model`, re-exported here), so its weights
drop into the joint model's ``relation`` subtree.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jml_jax.models.bert import BertConfig, get_bert_config
from jml_jax.models.jml import JMLConfig, JMLModel, build_relation_model, normalize_images
from jml_jax.models.relation import RelationModule
from jml_jax.weights import read_artifact, resolve_path


def bert_config_from(config) -> BertConfig:
    m = config.model
    if m.bert == "from_checkpoint":
        folder = resolve_path(m.bert_init, what="model.bert_init")
        record = read_artifact(folder) if folder.is_dir() else None
        if record is not None and record.get("bert_config"):
            return BertConfig.from_dict(record["bert_config"])
        for name in ("bert_config.json", "config.json"):
            if (folder / name).exists():
                return BertConfig.from_hf_json(folder / name)
        raise FileNotFoundError(f"model.bert='from_checkpoint' but {folder} has no config.json")
    bert = get_bert_config(m.bert)
    if m.get("bert_vocab_size"):
        bert = dataclasses.replace(bert, vocab_size=int(m.bert_vocab_size))
    return bert


def jml_config_from(config, *, relation_inputs: str = "module") -> JMLConfig:
    """The JMLConfig of ``config.model``. ``relation_inputs`` (see JMLConfig):
    'module' (default) is the whole joint model, as checkpoints and converters
    see it; the joint task passes 'batch' when the relation cache is on
    (jml_jax/relation_cache.py `decide`)."""
    m = config.model
    blocks = tuple(m.resnet_blocks) if m.resnet_blocks else None
    return JMLConfig(
        bert=bert_config_from(config),
        resnet_depth=m.resnet_depth,
        resnet_blocks=blocks,
        resnet_width=m.resnet_width,
        num_heads=m.num_heads,
        dropout_rate=m.dropout_rate,
        relation_gate=m.relation_gate,
        mate_relation_gate=m.get("mate_relation_gate"),
        masc_relation_gate=m.get("masc_relation_gate"),
        mate_vision=m.mate_vision,
        masc_vision=m.masc_vision,
        use_images=m.use_images,
        mask_attention=m.mask_attention,
        span_packing=m.span_packing,
        train_main_resnet=m.train_main_resnet,
        main_resnet_bn_updates=int(m.get("main_resnet_bn_updates", 1)),
        relation_inputs=relation_inputs,
        relation_pad_group=trc_pad_group(config),
        dtype=m.dtype,
        remat=m.remat,
    )


def trc_pad_group(config) -> int:
    """Rows per TRC batch whose longest tweet sets the relation module's text
    length under ``data.trc_pad_to_batch_max`` (stage one only), else 0.

    The original's TRC loaders, train and test, take ``--TRC_batch_size`` rows
    per batch (§2.3): our training batch. Evaluation batches must hold whole
    ones, so that each group of rows is one of the original's test batches.
    """
    if config.get("task", "joint") != "relation" or not config.data.get("trc_pad_to_batch_max", False):
        return 0
    group = int(config.batch_size)
    if int(config.eval_batch_size) % group:
        raise ValueError(f"data.trc_pad_to_batch_max: eval_batch_size={config.eval_batch_size} must be a "
                         f"multiple of batch_size={group} (the original's TRC batch)")
    return group


def build_model(config, *, relation_inputs: str = "module") -> JMLModel:
    return JMLModel(jml_config_from(config, relation_inputs=relation_inputs))


def dummy_inputs(config, batch: int = 1):
    """Shapes the model is initialised with: (ids, mask, starts, ends, images)."""
    length, spans = config.data.max_seq_length, config.data.max_spans
    ids = jnp.zeros((batch, length), jnp.int32)
    starts = jnp.zeros((batch, spans), jnp.int32)
    crop = config.data.crop_size
    images = jnp.zeros((batch, crop, crop, 3), jnp.uint8) if config.model.use_images else None
    return ids, ids, starts, starts, images


def make_init_fn(model: JMLModel, config):
    inputs = dummy_inputs(config)
    return lambda rng: model.init(rng, *inputs)


def abstract_variables(model: JMLModel, config) -> dict:
    """The joint model's variables at ``config``'s shapes as unboxed
    ShapeDtypeStructs (no computation)."""
    init = make_init_fn(model, contract.joint_inputs_of(config, 1, train=True))
    return nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))


def make_relation_init_fn(model: RelationModule, config):
    """``rng -> variables`` of the stage-one relation module at the config's shapes."""
    length = config.data.max_seq_length
    size = config.data.relation_resize
    ids = jnp.zeros((1, length), jnp.int32)
    images = jnp.zeros((1, size, size, 3), jnp.uint8) if model.use_images else None

    def init(rng):
        pixels = None if images is None else normalize_images(images)
        return model.init(rng, ids, ids, pixels)

    return init
