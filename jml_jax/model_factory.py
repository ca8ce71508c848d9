"""From an experiment config to a model and its init function (no weights: jml_jax/weights.py).

Names in configs are resolved through explicit tables that fail with the list
of valid names (`jml_jax.models.bert.get_bert_config`). The relation module of
stage one comes from the joint model's own builder
(`jml_jax.models.jml.build_relation_model`, re-exported here), so its weights
drop into the joint model's ``relation`` subtree.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax

from jml_jax import contract
from jml_jax.models.bert import BertConfig, get_bert_config
from jml_jax.models.jml import JMLConfig, JMLModel, build_relation_model, normalize_images  # noqa: F401 (re-exported)
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


def jml_config_from(config, *, relation_inputs: str = "module", relation_pad_group: int = 0) -> JMLConfig:
    """The JMLConfig of ``config.model``. ``relation_inputs`` (see JMLConfig):
    'module' (default) is the whole joint model, as checkpoints and converters
    see it; the joint task passes 'batch' when the relation cache is on
    (jml_jax/relation_cache.py `decide`). ``relation_pad_group``: stage one's
    TRC padding (jml_jax/tasks.py `trc_pad_group`)."""
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
        relation_pad_group=relation_pad_group,
        dtype=m.dtype,
        remat=m.remat,
    )


def build_model(config, *, relation_inputs: str = "module") -> JMLModel:
    return JMLModel(jml_config_from(config, relation_inputs=relation_inputs))


def make_init_fn(model: JMLModel, inputs: Mapping[str, jax.ShapeDtypeStruct]):
    """``rng -> variables`` of the joint model, traced on zeros of ``inputs``
    (a task's training inputs, jml_jax/contract.py; any batch size)."""
    zeros = contract.zeros(inputs)
    args = tuple(zeros.get(k) for k in ("input_ids", "input_mask", "span_starts", "span_ends", "image"))
    return lambda rng: model.init(rng, *args)


def abstract_variables(model: JMLModel, config) -> dict:
    """The joint model's variables at ``config``'s shapes as unboxed
    ShapeDtypeStructs (no computation)."""
    init = make_init_fn(model, contract.joint_inputs_of(config, 1, train=True))
    return nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))


def make_relation_init_fn(model: RelationModule, config):
    """``rng -> variables`` of the stage-one relation module at the config's
    shapes (its training inputs, jml_jax/contract.py)."""
    zeros = contract.zeros(contract.relation_inputs_of(config, 1, train=True, use_images=model.use_images))
    images = zeros.get("image")

    def init(rng):
        pixels = None if images is None else normalize_images(images)
        return model.init(rng, zeros["input_ids"], zeros["input_mask"], pixels)

    return init
