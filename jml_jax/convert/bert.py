"""PyTorch / safetensors BERT checkpoints -> `jml_jax.models.bert` parameters.

Key mapping (PyTorch -> ours, see the tree in `jml_jax.models.bert`)::

    {p}embeddings.word_embeddings.weight        -> embeddings/word_embeddings/embedding
    {p}embeddings.LayerNorm.{weight|gamma}      -> embeddings/LayerNorm/scale
    {p}embeddings.LayerNorm.{bias|beta}         -> embeddings/LayerNorm/bias
    {p}encoder.layer.{i}.attention.self.query.weight -> encoder/layer_{i}/attention/self/query/kernel (.T)
    ...                                              (every Linear weight is transposed)
    {p}pooler.dense.weight                      -> pooler/dense/kernel (.T)

``{p}`` is the prefix: ``bert.`` in BertFor* and the original JML checkpoints
(§11 of original-jml-code.md), empty in plain ``BertModel`` files,
``pretrain_model.mybert.bert.`` for the relation BERT of a joint checkpoint.
Old TF-converted files name LayerNorm tensors ``gamma``/``beta`` (§11); modern
ones ``weight``/``bias``; both are accepted.

Known-irrelevant tensors (the ``embeddings.position_ids`` buffer, the MLM/NSP
heads ``cls.*``) are not parameters of an encoder: they are dropped and the
drop is logged at INFO level through this module's logger, with every key
named. Every other unmapped key is returned as unrecognised, and
`strict_merge` reports it.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np

from jml_jax.convert.common import flatten_tree, read_safetensors, strict_merge, torch_load
from jml_jax.models.bert import BertConfig

log = logging.getLogger(__name__)

_ANCHOR = "embeddings.word_embeddings.weight"

# PyTorch sub-module path (after the prefix, before .weight/.bias) -> our path.
_EMBEDDINGS = {
    "embeddings.word_embeddings": "embeddings/word_embeddings",
    "embeddings.position_embeddings": "embeddings/position_embeddings",
    "embeddings.token_type_embeddings": "embeddings/token_type_embeddings",
}
_LINEARS = {
    "attention.self.query": "attention/self/query",
    "attention.self.key": "attention/self/key",
    "attention.self.value": "attention/self/value",
    "attention.output.dense": "attention/output/dense",
    "intermediate.dense": "intermediate/dense",
    "output.dense": "output/dense",
}
_LAYER_NORMS = {
    "attention.output.LayerNorm": "attention/output/LayerNorm",
    "output.LayerNorm": "output/LayerNorm",
}
_LN_SCALE = {"weight": "scale", "gamma": "scale"}
_LN_BIAS = {"bias": "bias", "beta": "bias"}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")


def _is_dropped(rest: str) -> bool:
    """Tensors of a BERT checkpoint that are not encoder parameters."""
    return rest == "embeddings.position_ids" or rest.startswith("cls.")


def detect_bert_prefix(keys) -> str:
    """The prefix in front of ``embeddings.word_embeddings.weight``.

    Raises ValueError when there is no BERT in ``keys`` or more than one (as in
    a joint JML checkpoint: ``bert.`` and ``pretrain_model.mybert.bert.``).
    """
    found = sorted(k[: -len(_ANCHOR)] for k in keys if k.endswith(_ANCHOR))
    if not found:
        raise ValueError(f"no BERT found: no key ends with {_ANCHOR!r}")
    if len(found) > 1:
        raise ValueError(
            f"several BERTs found (prefixes {found}); pass prefix= explicitly"
        )
    return found[0]


def _map_key(rest: str, config: BertConfig) -> tuple[str, bool] | None:
    """PyTorch key without prefix -> (our flat path, transpose?) or None."""
    module, _, leaf = rest.rpartition(".")
    if module in _EMBEDDINGS and leaf == "weight":
        return f"{_EMBEDDINGS[module]}/embedding", False
    if module == "embeddings.LayerNorm":
        name = _LN_SCALE.get(leaf) or _LN_BIAS.get(leaf)
        return (f"embeddings/LayerNorm/{name}", False) if name else None
    if module == "pooler.dense" and leaf in ("weight", "bias"):
        return ("pooler/dense/kernel", True) if leaf == "weight" else ("pooler/dense/bias", False)
    m = _LAYER_RE.match(rest)
    if not m:
        return None
    index, sub, leaf = int(m.group(1)), m.group(2), m.group(3)
    if index >= config.num_hidden_layers:
        return None  # reported as unrecognised: the checkpoint is deeper than the config
    base = f"encoder/layer_{index}"
    if sub in _LINEARS and leaf in ("weight", "bias"):
        if leaf == "weight":
            return f"{base}/{_LINEARS[sub]}/kernel", True
        return f"{base}/{_LINEARS[sub]}/bias", False
    if sub in _LAYER_NORMS:
        name = _LN_SCALE.get(leaf) or _LN_BIAS.get(leaf)
        return f"{base}/{_LAYER_NORMS[sub]}/{name}", False
    return None


def bert_state_to_flat(
    state: Mapping[str, Any],
    config: BertConfig,
    prefix: str | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Maps a PyTorch BERT state dict to flat paths of our parameter tree.

    Args:
      state: ``{key: array}`` (NumPy arrays or anything ``np.asarray`` takes).
      config: the target architecture; position tables longer than
        ``config.max_position_embeddings`` are cut to it (logged).
      prefix: the key prefix of the BERT (e.g. ``'bert.'``,
        ``'pretrain_model.mybert.bert.'``, ``''``). With an explicit prefix,
        keys outside it are ignored (the caller owns them). With None the
        prefix is detected (`detect_bert_prefix`) and keys outside it are
        returned as unrecognised.

    Returns:
      (flat, unrecognised): ``{"embeddings/word_embeddings/embedding": array,
      ...}`` with Linear weights transposed to ``[in, out]``; and the source
      keys that could not be mapped. Dropped known-irrelevant keys
      (``embeddings.position_ids``, ``cls.*``) are logged, not returned.
    """
    explicit = prefix is not None
    if prefix is None:
        prefix = detect_bert_prefix(state.keys())
    flat: dict[str, np.ndarray] = {}
    unrecognised: list[str] = []
    dropped: list[str] = []
    for key, value in state.items():
        if not key.startswith(prefix):
            if explicit:
                continue
            (dropped if _is_dropped(key) else unrecognised).append(key)
            continue
        rest = key[len(prefix):]
        if _is_dropped(rest):
            dropped.append(key)
            continue
        mapped = _map_key(rest, config)
        if mapped is None:
            unrecognised.append(key)
            continue
        path, transpose = mapped
        if path in flat:
            # e.g. both LayerNorm.weight and LayerNorm.gamma: ambiguous.
            unrecognised.append(key)
            continue
        array = np.asarray(value)
        flat[path] = array.T if transpose else array
    pos = "embeddings/position_embeddings/embedding"
    if pos in flat and flat[pos].shape[0] > config.max_position_embeddings:
        log.info(
            "cutting %s from %d to max_position_embeddings=%d rows",
            prefix + "embeddings.position_embeddings.weight",
            flat[pos].shape[0], config.max_position_embeddings,
        )
        flat[pos] = flat[pos][: config.max_position_embeddings]
    if dropped:
        log.info("dropped %d non-encoder tensors: %s", len(dropped), ", ".join(dropped))
    return flat, unrecognised


def flat_to_bert_state(
    flat: Mapping[str, Any],
    prefix: str = "bert.",
    layer_norm_names: tuple[str, str] = ("gamma", "beta"),
) -> dict[str, np.ndarray]:
    """Inverse of `bert_state_to_flat`: our flat paths -> PyTorch keys.

    ``layer_norm_names`` picks the LayerNorm tensor names: ``('gamma',
    'beta')`` as in the original checkpoints (§11), ``('weight', 'bias')`` as
    in transformers. Raises ValueError naming any path it cannot map.
    """
    scale_name, bias_name = layer_norm_names
    inv_linears = {v: k for k, v in _LINEARS.items()}
    inv_norms = {v: k for k, v in _LAYER_NORMS.items()}
    inv_embed = {v: k for k, v in _EMBEDDINGS.items()}
    state: dict[str, np.ndarray] = {}
    bad: list[str] = []
    for path, value in flat.items():
        array = np.asarray(value)
        module, _, leaf = path.rpartition("/")
        if module in inv_embed and leaf == "embedding":
            state[f"{prefix}{inv_embed[module]}.weight"] = array
            continue
        if module == "pooler/dense":
            key, transpose = ("weight", True) if leaf == "kernel" else ("bias", False)
            state[f"{prefix}pooler.dense.{key}"] = array.T if transpose else array
            continue
        ln_leaf = {"scale": scale_name, "bias": bias_name}.get(leaf)
        if module == "embeddings/LayerNorm" and ln_leaf:
            state[f"{prefix}embeddings.LayerNorm.{ln_leaf}"] = array
            continue
        m = re.match(r"^encoder/layer_(\d+)/(.+)$", module)
        if m:
            base = f"{prefix}encoder.layer.{m.group(1)}"
            sub = m.group(2)
            if sub in inv_linears and leaf in ("kernel", "bias"):
                if leaf == "kernel":
                    state[f"{base}.{inv_linears[sub]}.weight"] = array.T
                else:
                    state[f"{base}.{inv_linears[sub]}.bias"] = array
                continue
            if sub in inv_norms and ln_leaf:
                state[f"{base}.{inv_norms[sub]}.{ln_leaf}"] = array
                continue
        bad.append(path)
    if bad:
        raise ValueError(f"not BERT parameter paths: {', '.join(bad)}")
    return state


def read_state_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file (NumPy only) or a torch ``.bin``/``.pt``
    file (needs torch) into ``{key: np.ndarray}``. Floating torch tensors are
    read as float32 (fp16/bf16 checkpoints are upcast)."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = torch_load(path)
    import torch
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {', '.join(map(str, bad))}")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items()}


def _resolve_files(path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None]:
    """(weights file, config.json or None) for a folder or a single file."""
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                weights = path / name
                break
        else:
            raise FileNotFoundError(
                f"{path}: no model.safetensors or pytorch_model.bin in this folder"
            )
        config_json = path / "config.json"
    elif path.is_file():
        weights, config_json = path, path.parent / "config.json"
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    return weights, (config_json if config_json.is_file() else None)


def expected_bert_params(config: BertConfig, add_pooler: bool = True) -> dict[str, Any]:
    """The unboxed ``params`` tree of BertModel as ShapeDtypeStructs (no compute)."""
    import jax
    import jax.numpy as jnp
    from flax.linen import meta

    from jml_jax.models.bert import BertModel

    model = BertModel(config, add_pooler=add_pooler)
    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids))
    return meta.unbox(shapes)["params"]


def load_bert_checkpoint(
    path: str | os.PathLike,
    config: BertConfig | None = None,
    *,
    add_pooler: bool = True,
    prefix: str | None = None,
) -> tuple[BertConfig, dict[str, Any]]:
    """Loads a BERT checkpoint into our parameter tree, strictly.

    Args:
      path: an HF model folder (config.json + model.safetensors or
        pytorch_model.bin), or a single weights file (.safetensors, or
        .bin/.pt with torch installed).
      config: the architecture; default: the config.json beside the weights.
      add_pooler: whether the target model has a pooler; with False, pooler
        tensors in the checkpoint are dropped (logged).
      prefix: the BERT key prefix (see `bert_state_to_flat`); default detected.

    Returns:
      (config, params): ``params`` is the content of the ``'params'``
      collection as float32 NumPy arrays; use
      ``BertModel(config).apply({'params': params}, ...)``.

    Raises:
      CheckpointMismatchError naming every missing, unexpected and wrongly
      shaped tensor at once.
    """
    path = pathlib.Path(path)
    weights, config_json = _resolve_files(path)
    if config is None:
        if config_json is None:
            raise ValueError(f"{path}: no config.json beside the weights; pass config=")
        config = BertConfig.from_hf_json(config_json)
    state = read_state_file(weights)
    params = bert_state_to_params(
        state, config, add_pooler=add_pooler, prefix=prefix, source=str(weights)
    )
    return config, params


def flax_params_to_bert_state(params: Mapping[str, Any], **kwargs) -> dict[str, np.ndarray]:
    """Nested ``params`` tree -> PyTorch state dict (see `flat_to_bert_state`)."""
    return flat_to_bert_state(flatten_tree(params), **kwargs)


def bert_state_to_params(
    state: Mapping[str, Any],
    config: BertConfig,
    *,
    add_pooler: bool = True,
    prefix: str | None = None,
    source: str = "state dict",
) -> dict[str, Any]:
    """In-memory counterpart of `load_bert_checkpoint`: state dict -> ``params``.

    With ``add_pooler=False``, pooler tensors in ``state`` are dropped (logged).
    Raises CheckpointMismatchError (naming ``source``) on any mismatch.
    """
    flat, unrecognised = bert_state_to_flat(state, config, prefix)
    if not add_pooler:
        pooler = [k for k in flat if k.startswith("pooler/")]
        if pooler:
            log.info("add_pooler=False: dropping %s", ", ".join(pooler))
        flat = {k: v for k, v in flat.items() if not k.startswith("pooler/")}
    return strict_merge(
        expected_bert_params(config, add_pooler),
        flat,
        source=source,
        unrecognised=unrecognised,
    )


__all__ = [
    "bert_state_to_flat",
    "bert_state_to_params",
    "detect_bert_prefix",
    "expected_bert_params",
    "flat_to_bert_state",
    "flax_params_to_bert_state",
    "load_bert_checkpoint",
    "read_state_file",
]
