"""What differs between the two training stages, as small task objects.

`jml_jax.train.train_and_evaluate` is the only training loop. A task tells it:

  * which model to build and how to initialise it (``model``, ``init_fn``);
  * which batch keys the model reads (``batch_keys``);
  * the loss (``loss_fn``) and which top-level parameters stay frozen;
  * which pretrained pieces to load before step 1 (``pretrained_pieces``);
  * what to add to the batches before the steps read them (``prepare_inputs``);
  * how to score an eval split (``make_evaluator``; jml_jax/evaluate.py);
  * what to hand on when a better model is found or the run ends (``export``).

Stage two, `JointTask`: the joint model (models/jml.py) on Twitter-2015/2017,
the relation module frozen (§2.5). Stage one, `RelationTask`: the relation
module alone on TRC (§2.3-§2.4); it writes ``<workdir>/relation`` (the last
epoch, what the original hands to the joint model) and ``relation_best``, both
'relation' artifacts (jml_jax/weights.py) that a joint config names as
``model.relation_init``.

The config chooses the task by ``config.task`` ('joint' or 'relation').
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jml_jax import losses, model_factory, relation_cache, weights
from jml_jax.convert.common import flatten_tree
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


class JointTask:
    """Stage two: MATE + MASC with the relation-gated image features.

    With the relation cache on (``model.relation_cache``, jml_jax/relation_cache.py;
    the default with fixed or centre crops) the model has no relation module:
    ``prepare_inputs`` computes its outputs once per example and the batches
    carry them as ``relation_probs`` [B, 2] (an extra entry of ``batch_keys``
    and ``eval_keys``). ``relation_cached`` says which is in use.
    """

    name = "joint"
    batch_keys = ("input_ids", "input_mask", "start_positions", "end_positions",
                  "span_starts", "span_ends", "polarity_labels", "span_mask")
    eval_keys = ("input_ids", "input_mask", "span_starts", "span_ends", "mask", "row")

    def __init__(self, config):
        self.config = config
        self.relation_cached, why = relation_cache.decide(config)
        log.info("relation cache %s: %s", "on" if self.relation_cached else "off", why)
        self.model = model_factory.build_model(config, relation_inputs="batch" if self.relation_cached else "module")
        self.jml = self.model.config
        self.init_fn = model_factory.make_init_fn(self.model, config)
        if self.relation_cached:
            self.batch_keys = type(self).batch_keys + ("relation_probs",)
            self.eval_keys = type(self).eval_keys + ("relation_probs",)
        # The relation module's variables read with the pretrained pieces, kept
        # for prepare_inputs so they are not read twice.
        self._relation_variables = None

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

    def pretrained_pieces(self, abstract: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not self.relation_cached:
            return weights.joint_pieces(self.config, self.jml, abstract)
        # The pieces of the whole joint model (its relation subtree included:
        # model.relation_init or original_checkpoint); the relation's are kept
        # for prepare_inputs, the rest go into the state.
        full = relation_cache.with_relation(abstract, relation_cache.relation_abstract(self.config, self.jml))
        module_jml = dataclasses.replace(self.jml, relation_inputs="module")
        pieces, self._relation_variables = relation_cache.split_pieces(
            weights.joint_pieces(self.config, module_jml, full))
        return pieces

    def prepare_inputs(self, exp, train_data, eval_splits, *, workdir=None):
        """``(train_data, eval_splits)`` as the model's steps read them (train_data
        may be None: evaluation only). Without the relation cache the batches
        are used as they come; with it they gain ``relation_probs`` [b, 2], the
        frozen relation module's outputs computed once per example
        (jml_jax/relation_cache.py), from the module ``workdir``'s run trained
        with (`relation_cache.pin`)."""
        del exp
        if not self.relation_cached:
            return train_data, eval_splits
        variables, self._relation_variables = self._relation_variables, None
        return relation_cache.attach(self.config, self.jml, variables, train_data, eval_splits, workdir=workdir)

    def make_evaluator(self, mesh, shardings, rules=None):
        from jml_jax.evaluate import Evaluator, decode_config_from

        return Evaluator(self.model, mesh, shardings, decode_config_from(self.config))

    def export(self, workdir: pathlib.Path, state, *, event: str) -> dict:
        """Nothing to hand on: the joint model's checkpoints are its product."""
        del workdir, state, event
        return {}


class RelationTask:
    """Stage one: the relation module on TRC, in training mode (§2.4)."""

    name = "relation"
    batch_keys = ("input_ids", "input_mask", "labels")
    eval_keys = ("input_ids", "input_mask", "labels", "mask", "row")

    def __init__(self, config):
        self.config = config
        self.jml = model_factory.jml_config_from(config)
        self.model = model_factory.build_relation_model(self.jml)
        self.init_fn = model_factory.make_relation_init_fn(self.model, config)
        if not self.model.use_images:
            log.warning(
                "TEXT-ONLY relation training (model.use_images=False): the module sees a zero image grid, "
                "so image_adds is predicted from the text alone; the result has no pre_resnet and cannot "
                "gate a joint model with images")

    frozen_prefixes: tuple[str, ...] = ()

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

    def prepare_inputs(self, exp, train_data, eval_splits, *, workdir=None):
        """The batches are used as they come."""
        del exp, workdir
        return train_data, eval_splits

    def pretrained_pieces(self, abstract: Mapping[str, Any]) -> dict[str, np.ndarray]:
        pieces = weights.relation_pieces(self.config, self.jml, abstract, use_images=self.model.use_images)
        relation = self.config.get("relation")
        if relation is not None and relation.original_layernorm_init:
            if "params/bert/embeddings/LayerNorm/scale" in pieces:
                raise ValueError("relation.original_layernorm_init with model.bert_init or relation_init set: "
                                 "the original's LayerNorm draw only happens when no BERT weights load (§10.1)")
            pieces.update(original_layernorm_pieces(abstract["params"], self.config.seed))
        return pieces

    def make_evaluator(self, mesh, shardings, rules=None):
        from jml_jax.evaluate import RelationEvaluator

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


def get_task(config):
    """The task object named by ``config.task``."""
    name = config.get("task", "joint")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name](config)


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
