"""What differs between the two training stages, as small task objects.

`jml_jax.train.train_and_evaluate` is the only training loop. A task tells it:

  * which model to build and how to initialise it (``model``, ``init_fn``);
  * the model's inputs, names, shapes and dtypes, for a batch size in training
    or evaluation (``inputs``; jml_jax/contract.py): the one statement that
    the loop, the evaluators, the planner, the init and the synthetic test
    batches read (``batch_keys``/``eval_keys`` are its names);
  * the loss (``loss_fn``) and which top-level parameters stay frozen;
  * which pretrained pieces to load before step 1, and what the inputs need
    from them (``pretrained``: ``(pieces, pretrained_inputs)``);
  * what to add to the batches before the steps read them (``prepare_inputs``,
    given ``pretrained_inputs`` explicitly);
  * how to score an eval split (``make_evaluator``, ``metric_names``,
    ``decodes_spans``; jml_jax/evaluators.py);
  * what to hand on when a better model is found or the run ends (``export``);
  * what it asks of a config's paths before any data is read (``check_config``,
    a class method) and whether eval splits carry host-side features
    (``eval_features``).

Stage two, `JointTask`: the joint model (models/jml.py) on Twitter-2015/2017,
the relation module frozen (§2.5). Stage one, `RelationTask`: the relation
module alone on TRC (§2.3-§2.4); it writes ``<workdir>/relation`` (the last
epoch, what the original hands to the joint model) and ``relation_best``, both
'relation' artifacts (jml_jax/weights.py) that a joint config names as
``model.relation_init``.

The config chooses the task by ``config.task`` ('joint' or 'relation',
`task_class`); nothing outside this module reads ``config.task``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jml_jax import contract, losses, model_factory, relation_cache, weights
from jml_jax.convert.common import flatten_tree
from jml_jax.evaluators import (Evaluator, RelationEvaluator, decode_config_from, joint_metric_names,
                                relation_metric_names)
from jml_jax.metrics import RELATIONS
from jml_jax.models.jml import normalize_images

log = logging.getLogger(__name__)
RELATION_DIR = "relation"
RELATION_BEST_DIR = "relation_best"
LAYERNORM_INIT_STD = 0.02  # §10.1 / §8: the original's `apply` init of BERTLayerNorm


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def joint_loss(model, jml, params, batch_stats, batch, rng, train, *, groups: int = 1, relation_probs=None):
    """``-> (loss, (aux, new_batch_stats))``: MATE + MASC (§5.3) of the joint ``model``
    (configured by ``jml``, a JMLConfig) on one batch.

    ``groups``: the batch holds that many contiguous groups of the original's
    mini-batch size, each normalised on its own (§5.3) and with its own
    BatchNorm statistics (jml_jax/steps.py, one-pass accumulation).
    ``relation_probs``: the cached relation outputs [B, 2] when the model has
    no relation module (jml_jax/relation_cache.py).
    """
    update_bn = jml.use_images and jml.train_main_resnet
    mutable = ["batch_stats"] if (train and update_bn) else False
    result = model.apply(
        _variables(params, batch_stats), batch["input_ids"], batch["input_mask"], batch["span_starts"],
        batch["span_ends"], batch.get("image"), deterministic=not train, train=train,
        rngs={"dropout": rng}, mutable=mutable, groups=groups, relation_probs=relation_probs,
    )
    out, new_vars = result if mutable else (result, {})
    loss, aux = losses.jml_loss(
        out["start_logits"], out["end_logits"], batch["start_positions"], batch["end_positions"],
        out["polarity_logits"], batch["polarity_labels"], batch["span_mask"],
        boundary_mask=batch["input_mask"] if jml.mask_attention else None, groups=groups,
    )
    aux = {k: v for k, v in aux.items() if k != "loss"}  # the step reports the loss itself
    return loss, (aux, new_vars.get("batch_stats", batch_stats))


class _Task:
    """What both tasks derive from their own statements."""

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The names of the training inputs (`inputs`)."""
        return tuple(self.inputs(1, train=True))

    @property
    def eval_keys(self) -> tuple[str, ...]:
        """The names of the evaluation inputs (`inputs`)."""
        return tuple(self.inputs(1, train=False))

    def pretrained_pieces(self, abstract: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The state's pretrained pieces (the first half of `pretrained`)."""
        return self.pretrained(abstract)[0]

    @classmethod
    def check_config(cls, config) -> None:
        """Config checks of this task that need no data (default: none)."""
        del config


class JointTask(_Task):
    """Stage two: MATE + MASC with the relation-gated image features.

    With the relation cache on (``model.relation_cache``, jml_jax/relation_cache.py;
    the default with fixed or centre crops) the model has no relation module:
    ``prepare_inputs`` computes its outputs once per example and the batches
    carry them as ``relation_probs`` [B, 2] (an extra input, train and eval).
    ``relation_cached`` says which is in use.
    """

    name = "joint"
    decodes_spans = True  # evaluation decodes aspect spans: threshold sweeps and prediction apply
    eval_features = True  # eval splits carry their host-side features (tokens, words, gold aspects)

    def __init__(self, config):
        self.config = config
        self.relation_cached, why = relation_cache.decide(config)
        log.info("relation cache %s: %s", "on" if self.relation_cached else "off", why)
        self.model = model_factory.build_model(config, relation_inputs="batch" if self.relation_cached else "module")
        self.jml = self.model.config
        self.init_fn = model_factory.make_init_fn(self.model, self.inputs(1, train=True))

    def inputs(self, batch_size: int, *, train: bool) -> contract.Inputs:
        """The joint model's inputs (jml_jax/contract.py `joint_inputs`), with
        ``relation_probs`` when the relation cache is on."""
        return contract.joint_inputs_of(self.config, batch_size, train=train, relation_probs=self.relation_cached)

    @staticmethod
    def metric_names() -> list[str]:
        return joint_metric_names()

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        """Top-level parameter groups that get no update and no optimizer state:
        the relation module whenever the model holds it (§2.5), the main ResNet
        when it is not trained."""
        frozen = []
        if self.jml.use_images:
            if not self.relation_cached:
                frozen.append("relation")
            if not self.jml.train_main_resnet:
                frozen.append("resnet")
        return tuple(frozen)

    def loss_fn(self, params, batch_stats, batch, rng, train, *, groups: int = 1):
        """``-> (loss, (aux, new_batch_stats))``: `joint_loss` of this task's model."""
        relation_probs = batch.get("relation_probs") if self.relation_cached else None
        return joint_loss(self.model, self.jml, params, batch_stats, batch, rng, train, groups=groups,
                          relation_probs=relation_probs)

    def pretrained(self, abstract: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Any]:
        """``(pieces, pretrained_inputs)``: the state's pretrained pieces, and
        the frozen relation module's variables when the relation cache is on
        (read once, with the rest: model.relation_init or original_checkpoint),
        else None. Pass the second to `prepare_inputs`."""
        if not self.relation_cached:
            return weights.joint_pieces(self.config, self.jml, abstract), None
        full = relation_cache.with_relation(abstract, relation_cache.relation_abstract(self.config, self.jml))
        module_jml = dataclasses.replace(self.jml, relation_inputs="module")
        return relation_cache.split_pieces(weights.joint_pieces(self.config, module_jml, full))

    def prepare_inputs(self, exp, train_data, eval_splits, *, workdir=None, pretrained_inputs=None):
        """``(train_data, eval_splits)`` as the model's steps read them (train_data
        may be None: evaluation only). Without the relation cache the batches
        are used as they come; with it they gain ``relation_probs`` [b, 2], the
        frozen relation module's outputs computed once per example
        (jml_jax/relation_cache.py), from the module ``workdir``'s run trained
        with (`relation_cache.pin`). ``pretrained_inputs``: the relation
        variables `pretrained` returned, when it ran (a fresh run); None reads
        them from the config (a resumed run, evaluation)."""
        del exp
        if not self.relation_cached:
            return train_data, eval_splits
        return relation_cache.attach(self.config, self.jml, pretrained_inputs, train_data, eval_splits,
                                     workdir=workdir)

    def make_evaluator(self, mesh, shardings, rules=None):
        return Evaluator(self.model, mesh, shardings, decode_config_from(self.config),
                         inputs=self.inputs(1, train=False), rules=rules)

    def export(self, workdir: pathlib.Path, state, *, event: str) -> dict:
        """Nothing to hand on: the joint model's checkpoints are its product."""
        del workdir, state, event
        return {}


class RelationTask(_Task):
    """Stage one: the relation module on TRC, in training mode (§2.4)."""

    name = "relation"
    decodes_spans = False
    eval_features = False  # a TRC split is scored from its batches alone

    def __init__(self, config):
        self.config = config
        self.jml = model_factory.jml_config_from(config, relation_pad_group=trc_pad_group(config))
        self.model = model_factory.build_relation_model(self.jml)
        self.init_fn = model_factory.make_relation_init_fn(self.model, config)
        if not self.model.use_images:
            log.warning(
                "TEXT-ONLY relation training (model.use_images=False): the module sees a zero image grid, "
                "so image_adds is predicted from the text alone; the result has no pre_resnet and cannot "
                "gate a joint model with images")

    frozen_prefixes: tuple[str, ...] = ()

    def inputs(self, batch_size: int, *, train: bool) -> contract.Inputs:
        """The relation module's inputs (jml_jax/contract.py `relation_inputs`)."""
        return contract.relation_inputs_of(self.config, batch_size, train=train, use_images=self.model.use_images)

    @staticmethod
    def metric_names() -> list[str]:
        return relation_metric_names()

    @classmethod
    def check_config(cls, config) -> None:
        """A relation run with images needs its image folder (the TRC images)."""
        image_dir = config.data.image_dir
        if config.model.use_images and not (image_dir and os.path.isdir(image_dir)):
            raise ValueError(
                f"model.use_images is True but data.image_dir={image_dir!r} is not a folder; the TRC images "
                "come with the JML authors' release. Without them, train text-only: "
                "--config=configs/trc_relation.py:text_only")

    def images(self, batch) -> Any:
        """Normalised pixels as the joint model feeds its relation module (§2.5)."""
        if not self.model.use_images:
            return None
        if "image" not in batch:
            raise ValueError(
                "the relation module uses images but the batch has no 'image' (data.image_dir is not set); "
                "set data.image_dir or train text-only (configs/trc_relation.py:text_only)")
        return normalize_images(batch["image"], self.jml.image_mean, self.jml.image_std).astype(
            self.jml.compute_dtype)

    def loss_fn(self, params, batch_stats, batch, rng, train, *, groups: int = 1):
        """CE over the two 2-way relations, averaged (§2.4); dropout on and the
        ResNet's BatchNorm on batch statistics in training, as the original."""
        if groups != 1:
            raise ValueError("the relation stage trains one batch per step (optimizer.grad_accum_steps=1)")
        mutable = ["batch_stats"] if (train and batch_stats) else False
        result = self.model.apply(
            _variables(params, batch_stats), batch["input_ids"], batch["input_mask"], self.images(batch),
            deterministic=not train, train=train, rngs={"dropout": rng}, mutable=mutable,
        )
        logits, new_vars = result if mutable else (result, {})
        loss = losses.relation_loss(logits, batch["labels"])
        correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32).mean(0)
        aux = {f"{name}_accuracy": correct[i] for i, name in enumerate(RELATIONS)}
        return loss, (aux, new_vars.get("batch_stats", batch_stats))

    def prepare_inputs(self, exp, train_data, eval_splits, *, workdir=None, pretrained_inputs=None):
        """The batches are used as they come."""
        del exp, workdir, pretrained_inputs
        return train_data, eval_splits

    def pretrained(self, abstract: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], None]:
        """``(pieces, None)``: model.bert_init / resnet_init / relation_init
        (jml_jax/weights.py), and the original's LayerNorm draw when asked."""
        pieces = weights.relation_pieces(self.config, self.jml, abstract, use_images=self.model.use_images)
        relation = self.config.get("relation")
        if relation is not None and relation.original_layernorm_init:
            if "params/bert/embeddings/LayerNorm/scale" in pieces:
                raise ValueError("relation.original_layernorm_init with model.bert_init or relation_init set: "
                                 "the original's LayerNorm draw only happens when no BERT weights load (§10.1)")
            pieces.update(original_layernorm_pieces(abstract["params"], self.config.seed))
        return pieces, None

    def make_evaluator(self, mesh, shardings, rules=None):
        return RelationEvaluator(self, mesh, shardings, rules)

    def export(self, workdir: pathlib.Path, state, *, event: str) -> dict:
        """``event`` 'best': write ``relation_best``; 'end': write ``relation``
        (the last epoch, what the joint config's model.relation_init names)."""
        folder = workdir / (RELATION_BEST_DIR if event == "best" else RELATION_DIR)
        save_relation(folder, state.params, state.batch_stats)
        if event == "end":
            log.info("relation module (last epoch) written to %s: use it as the joint config's "
                     "model.relation_init", folder)
            return {"relation_dir": str(folder), "use_images": bool(self.model.use_images)}
        return {"relation_best_dir": str(folder)}


TASKS = {"joint": JointTask, "relation": RelationTask}


def task_class(config):
    """The task class named by ``config.task`` (its class-level facts, e.g.
    ``decodes_spans``, ``eval_features``, ``check_config``, without building a model)."""
    name = config.get("task", "joint")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]


def get_task(config):
    """The task object named by ``config.task``."""
    return task_class(config)(config)


def trc_pad_group(config) -> int:
    """Rows per TRC batch whose longest tweet sets the relation module's text
    length under ``data.trc_pad_to_batch_max`` (stage one only: the joint model
    feeds its module text padded to L, §2.5), else 0.

    The original's TRC loaders, train and test, take ``--TRC_batch_size`` rows
    per batch (§2.3): our training batch. Evaluation batches must hold whole
    ones, so that each group of rows is one of the original's test batches.
    """
    if not config.data.get("trc_pad_to_batch_max", False):
        return 0
    group = int(config.batch_size)
    if int(config.eval_batch_size) % group:
        raise ValueError(f"data.trc_pad_to_batch_max: eval_batch_size={config.eval_batch_size} must be a "
                         f"multiple of batch_size={group} (the original's TRC batch)")
    return group


def save_relation(path, params, batch_stats=None) -> None:
    """Writes a relation module's variables as a 'relation' artifact, replacing
    what is there (the relation module's own tree: the joint model's
    ``relation`` subtree)."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    weights.save_artifact(path, "relation", variables, overwrite=True)


def original_layernorm_pieces(abstract_params, seed: int) -> dict[str, np.ndarray]:
    """§10.1: the original's init of the relation BERT's LayerNorms, N(0, 0.02)
    for scale and bias (its `apply` re-draws BERTLayerNorm gamma/beta, §8),
    as flat 'params/bert/...' pieces."""
    rng = np.random.default_rng(seed)
    pieces = {}
    for key, leaf in sorted(flatten_tree(abstract_params["bert"]).items()):
        parts = key.split("/")
        if len(parts) >= 2 and parts[-2] == "LayerNorm" and parts[-1] in ("scale", "bias"):
            pieces[f"params/bert/{key}"] = rng.normal(0.0, LAYERNORM_INIT_STD, leaf.shape).astype(np.float32)
    if not pieces:
        raise ValueError("original_layernorm_init: the relation BERT has no LayerNorm parameters")
    return pieces
