"""Stage one: train the text-image relation module on TRC and hand it to the joint model.

    summary = train_relation(config, workdir, train_data, eval_data)

Follows the original's pre-training (original-jml-code.md §2.4): the
RelationModule (§2.2) alone, in training mode (dropout on, BatchNorm of its
ResNet on batch statistics), the loss of `jml_jax.losses.relation_loss` (CE
over the two 2-way relations, averaged), Adam with L2 decay and the
per-epoch LambdaLR of configs/trc_relation.py, an evaluation of every eval
split at the end of each epoch: per relation the accuracy and the F1 of the
positive class (``eval_relations`` / ``eval_relation_f1`` of the original),
and ``f1`` = image_adds F1 (the relation that gates the joint model's images,
§2.5; the paper's Table 4 headline).

Work directory::

    relation/        {'params', 'batch_stats'} of the LAST epoch (what the
                     original continues with, §2.4); give it to the joint run
                     as model.relation_init (jml_jax.model_factory)
    relation_best/   the same for the best epoch by select_split/select_metric
                     (kept for reference; the paper's numbers come from it)
    checkpoints/     train-state checkpoints per epoch (resume)
    metrics.jsonl, tensorboard/, summary.json, config.json

The parameter tree is the RelationModule's own (``bert``, ``pre_resnet``,
``aling_img_1``, ``img2txt`` ... ``aaali``, ``pair_preject``), i.e. the
joint model's ``relation/`` subtree. The joint model builds its relation
module from its own config (main BERT shape, ResNet depth/blocks/width), so
the stage-one config must use the same shapes; a mismatch is reported by a
strict merge when the joint run loads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jml_jax import checkpointing, losses, model_factory, optim
from jml_jax.checkpointing import Checkpointer
from jml_jax.convert.common import flatten_tree
from jml_jax.mesh import describe_mesh, make_mesh
from jml_jax.models.jml import JMLConfig, normalize_images
from jml_jax.models.relation import RelationModule
from jml_jax.progress import Progress
from jml_jax.sharding import batch_sharding, global_batch_from_process_local, normalize_rules
from jml_jax.steps import make_eval_step, make_train_step
from jml_jax.summary import MetricWriter
from jml_jax.train import NonFiniteLossError, TrainData, close_run
from jml_jax.train_state import abstract_sharded_state, create_sharded_state

log = logging.getLogger(__name__)

RELATIONS = ("text_represented", "image_adds")  # rows of the [B, 2, 2] logits (§2.2)
RELATION_DIR = "relation"
RELATION_BEST_DIR = "relation_best"
TRAIN_KEYS = ("input_ids", "input_mask", "labels")
EVAL_KEYS = TRAIN_KEYS + ("mask", "row")
LAYERNORM_INIT_STD = 0.02  # §10.1 / §8: the original's `apply` init of BERTLayerNorm


@dataclasses.dataclass
class RelationEvalSplit:
    """One TRC evaluation split.

    Attributes:
      name: 'test', 'train', ...
      make_iter: () -> iterator of per-process padded batches: input_ids,
        input_mask [b, L], labels [b, 2], mask [b] (1 = real row), row [b]
        (index of the example in the split), image [b, 224, 224, 3] when the
        image stream is on (data_pipeline.pipeline.make_eval_iter).
      num_examples: N, the number of real rows.
    """

    name: str
    make_iter: Callable[[], Iterable[dict]]
    num_examples: int


# --------------------------------------------------------------------------- model


def build_relation_model(jml: JMLConfig, *, use_images: bool | None = None) -> RelationModule:
    """The RelationModule exactly as `JMLModel.setup` builds it from ``jml``.

    ``use_images`` (default ``jml.use_images``) False gives the text-only
    module (zero image grid, no ``pre_resnet``).
    """
    return RelationModule(
        bert=jml.relation_bert_config,
        resnet_depth=jml.resnet_depth,
        resnet_blocks=jml.resnet_blocks,
        resnet_width=jml.resnet_width,
        num_heads=jml.num_heads,
        dropout_rate=jml.dropout_rate,
        mask_text=jml.mask_attention,
        use_images=jml.use_images if use_images is None else use_images,
        dtype=jml.compute_dtype,
        remat=jml.remat,
    )


def make_init_fn(model: RelationModule, config) -> Callable[[jax.Array], Any]:
    length = config.data.max_seq_length
    size = config.data.relation_resize
    ids = jnp.zeros((1, length), jnp.int32)
    images = jnp.zeros((1, size, size, 3), jnp.uint8) if model.use_images else None

    def init(rng):
        pixels = None if images is None else normalize_images(images)
        return model.init(rng, ids, ids, pixels)

    return init


def _model_images(model: RelationModule, jml: JMLConfig, batch) -> Any:
    """Normalised pixels as the joint model feeds its relation module (§2.5)."""
    if not model.use_images:
        return None
    if "image" not in batch:
        raise ValueError(
            "the relation module uses images but the batch has no 'image' (data.image_dir is not set, "
            "or data.feature_cache is, which the relation stage does not read); set data.image_dir "
            "or train text-only (model.use_images=False, configs/trc_relation.py:text_only)"
        )
    return normalize_images(batch["image"], jml.image_mean, jml.image_std).astype(jml.compute_dtype)


def make_relation_loss_fn(model: RelationModule, jml: JMLConfig):
    """``(params, batch_stats, batch, rng, train) -> (loss, (aux, new_batch_stats))``.

    Training runs the module as the original does (§2.4): dropout on and the
    ResNet's BatchNorm on batch statistics, updating the running ones.
    """

    def loss_fn(params, batch_stats, batch, rng, train):
        variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
        mutable = ["batch_stats"] if (train and batch_stats) else False
        result = model.apply(
            variables, batch["input_ids"], batch["input_mask"], _model_images(model, jml, batch),
            deterministic=not train, train=train, rngs={"dropout": rng}, mutable=mutable,
        )
        logits, new_vars = result if mutable else (result, {})
        loss = losses.relation_loss(logits, batch["labels"])
        correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32).mean(0)
        aux = {f"{name}_accuracy": correct[i] for i, name in enumerate(RELATIONS)}
        return loss, (aux, new_vars.get("batch_stats", batch_stats))

    return loss_fn


# --------------------------------------------------------------------------- metrics


def relation_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Scores of one split from its logits.

    Args:
      logits: [N, 2, 2] (row 0 text_represented, row 1 image_adds).
      labels: [N, 2] 0/1.

    Returns:
      ``{'<relation>/accuracy', '<relation>/precision', '<relation>/recall',
      '<relation>/f1', '<relation>/predicted_positive_frac'}`` for both
      relations (positive class = 1, predicted when P > 0.5, i.e. the argmax;
      precision/recall/F1 are 0 when undefined), ``loss`` (the mean CE of
      `relation_loss`) and ``f1`` = image_adds/f1 (the headline number).
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 3 or logits.shape[1:] != (2, 2) or labels.shape != logits.shape[:2]:
        raise ValueError(f"relation_metrics expects logits [N, 2, 2] and labels [N, 2]; got "
                         f"{logits.shape} and {labels.shape}")
    if logits.shape[0] == 0:
        raise ValueError("relation_metrics needs at least one example")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    out = {"loss": float(-np.take_along_axis(log_probs, labels[..., None], -1).mean())}
    predicted = np.argmax(logits, -1)
    for i, name in enumerate(RELATIONS):
        pred, gold = predicted[:, i] == 1, labels[:, i] == 1
        tp = int(np.sum(pred & gold))
        precision = tp / pred.sum() if pred.sum() else 0.0
        recall = tp / gold.sum() if gold.sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.update({
            f"{name}/accuracy": float(np.mean(pred == gold)),
            f"{name}/precision": float(precision),
            f"{name}/recall": float(recall),
            f"{name}/f1": float(f1),
            f"{name}/predicted_positive_frac": float(pred.mean()),
        })
    out["f1"] = out["image_adds/f1"]
    return out


class RelationEvaluator:
    """Jitted forward over a split -> `relation_metrics`."""

    def __init__(self, model: RelationModule, jml: JMLConfig, mesh, state_shardings, rules=None):
        self.mesh = mesh

        def forward(params, batch_stats, batch):
            variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
            logits = model.apply(variables, batch["input_ids"], batch["input_mask"],
                                 _model_images(model, jml, batch), deterministic=True, train=False)
            return {"logits": logits, "labels": batch["labels"], "mask": batch["mask"], "row": batch["row"]}

        self._step = make_eval_step(forward, state_shardings, batch_sharding(mesh), rules=rules)

    def predict(self, state, split: RelationEvalSplit) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, 2, 2], labels [N, 2]) in row order; every row exactly once."""
        n = split.num_examples
        logits = np.zeros((n, 2, 2), np.float32)
        labels = np.zeros((n, 2), np.int32)
        seen = np.zeros(n, bool)
        batches = split.make_iter()
        try:
            for batch in batches:
                keys = EVAL_KEYS + (("image",) if "image" in batch else ())
                out = jax.tree.map(np.asarray, self._step(state, global_batch_from_process_local(
                    {k: batch[k] for k in keys}, self.mesh)))
                rows = out["row"][out["mask"] > 0]
                logits[rows], labels[rows] = out["logits"][out["mask"] > 0], out["labels"][out["mask"] > 0]
                seen[rows] = True
        finally:
            if hasattr(batches, "close"):
                batches.close()
        if not seen.all():
            raise RuntimeError(f"split {split.name!r}: {int((~seen).sum())} of {n} rows were never evaluated")
        return logits, labels

    def evaluate(self, state, split: RelationEvalSplit) -> dict[str, float]:
        return relation_metrics(*self.predict(state, split))


# --------------------------------------------------------------------------- init


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


def _host_tree(tree):
    """The tree as whole NumPy arrays on every process.

    Orbax then writes plain values instead of slicing each sharded leaf on
    the devices, which costs one compile per leaf shape (minutes for a small
    model on a multi-device CPU).
    """
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def save_relation(path, params, batch_stats=None) -> None:
    """Writes a relation module's variables to ``path``, replacing what is there.

    Layout: an Orbax folder of ``{'params', 'batch_stats'}`` (batch_stats only
    when the module has any, i.e. with images), exactly the relation module's
    own tree; `model_factory` loads it for the joint config's
    model.relation_init.
    """
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    checkpointing.save_params(path, _host_tree(variables), overwrite=True)


# --------------------------------------------------------------------------- loop


def _steps(config, num_examples: int) -> tuple[int, int]:
    steps_per_epoch = num_examples // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{num_examples} training examples do not fill one batch of {config.batch_size}")
    total = steps_per_epoch * config.num_epochs
    if config.get("max_steps"):
        total = min(total, int(config.max_steps))
    return steps_per_epoch, total


def train_relation(config, workdir, train_data: TrainData, eval_data: Mapping[str, RelationEvalSplit],
                   *, devices=None) -> dict:
    """Trains the relation module on TRC, evaluates it every epoch, writes it out.

    Args:
      config: a configs/trc_relation.py config.
      workdir: output folder (see the module docstring); a run with
        checkpoints there resumes from the latest one.
      train_data: TrainData whose batches carry input_ids, input_mask
        [b, L], labels [b, 2] and, with images, image [b, S, S, 3].
      eval_data: {name: RelationEvalSplit}, scored at every epoch end.
      devices: the devices of the mesh (default: all of them).

    Returns:
      The summary (also ``workdir/summary.json``): ``final_step``,
      ``final_scores`` ({'<split>/<metric>': value} of the last evaluation),
      ``best_step``/``best_value``/``best_scores`` by
      ``select_split/select_metric`` (None without a select split),
      ``relation_dir`` (the last epoch: what the joint config's
      model.relation_init should name), ``relation_best_dir``,
      ``use_images``, ``total_steps``, ``steps_per_epoch``, ``train_seconds``.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    jml = model_factory.jml_config_from(config)
    model = build_relation_model(jml)
    if not model.use_images:
        log.warning(
            "TEXT-ONLY relation training (model.use_images=False): the module sees a zero image grid, "
            "so image_adds is predicted from the text alone; the result has no pre_resnet and cannot "
            "gate a joint model with images")
    steps_per_epoch, total_steps = _steps(config, train_data.num_examples)
    mesh = make_mesh(tuple(config.mesh_shape), devices=devices)
    rules = normalize_rules(config.axis_rules, mesh)
    init_fn = make_init_fn(model, config)
    abstract = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
    opt_cfg = dict(config.optimizer.to_dict())
    grad_accum = int(opt_cfg.pop("grad_accum_steps", 1))
    if opt_cfg.get("schedule") == "relation_epoch_decay":
        # One train_step is one optimizer update, whatever the accumulation.
        opt_cfg["steps_per_epoch"] = steps_per_epoch
    tx = optim.make_optimizer(opt_cfg, abstract["params"], max(1, total_steps))
    abstract_state, shardings = abstract_sharded_state(init_fn, tx, mesh, rules)

    select_split = config.get("select_split")
    select = f"{select_split}/{config.select_metric}" if select_split else None
    if select_split and select_split not in eval_data:
        raise ValueError(f"select_split={select_split!r} is not among the eval splits {sorted(eval_data)}")
    # Every epoch's scores go into its checkpoint's metadata; Orbax ranks by
    # this key but keeps no extra "best" state (relation_best is written here).
    tracked = select or (f"{next(iter(eval_data))}/f1" if eval_data else "epoch")
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, best_metric=tracked, keep_best=0)
    restored = ckpt.restore_or_none(abstract_state)
    empty_best = {"step": None, "value": -math.inf, "scores": {}}
    if restored is not None:
        state, meta = restored
        best, last = meta.get("best", empty_best), meta.get("last", {"step": None, "scores": {}})
        log.info("resumed from step %d in %s", int(state.step), workdir)
    else:
        state, _ = create_sharded_state(init_fn, tx, mesh, rules, jax.random.PRNGKey(config.seed))
        pieces = model_factory.load_relation_pieces(config, jml, abstract, use_images=model.use_images)
        if config.get("relation") and config.relation.original_layernorm_init:
            if "params/bert/embeddings/LayerNorm/scale" in pieces:
                raise ValueError("relation.original_layernorm_init with model.bert_init or relation_init set: "
                                 "the original's LayerNorm draw only happens when no BERT weights load (§10.1)")
            pieces.update(original_layernorm_pieces(abstract["params"], config.seed))
        state = model_factory.place_pretrained(state, pieces, shardings)
        best, last = empty_best, {"step": None, "scores": {}}
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    log.info("relation stage: mesh %s; %d steps (%d per epoch, batch %d), images %s",
             describe_mesh(mesh), total_steps, steps_per_epoch, config.batch_size,
             "on" if model.use_images else "OFF (text-only)")

    train_step = make_train_step(make_relation_loss_fn(model, jml), tx, shardings, batch_sharding(mesh),
                                 grad_accum_steps=grad_accum, rules=rules)
    evaluator = RelationEvaluator(model, jml, mesh, shardings, rules)
    writer = MetricWriter(workdir)
    start = int(state.step)
    batches = train_data.make_iter(start)
    progress = Progress(total_steps, start=start, unit_examples=config.batch_size)
    t0 = time.time()
    try:
        for step in range(start + 1, total_steps + 1):
            batch = next(batches)
            keys = TRAIN_KEYS + (("image",) if "image" in batch else ())
            state, metrics = train_step(state, global_batch_from_process_local({k: batch[k] for k in keys}, mesh))
            if not bool(metrics["is_finite"]):
                raise NonFiniteLossError(f"non-finite relation loss or gradient at step {step}; "
                                         "the update was not applied and nothing was saved from it")
            progress.update(step, loss=float(metrics["loss"]))
            if step % config.log_every_steps == 0 or step == total_steps:
                writer.write_scalars(step, {f"train/{k}": float(np.asarray(v)) for k, v in metrics.items()})
            if step % steps_per_epoch == 0 or step == total_steps:
                scores = {f"{name}/{k}": v for name, split in eval_data.items()
                          for k, v in evaluator.evaluate(state, split).items()}
                scores["epoch"] = step / steps_per_epoch
                writer.write_scalars(step, scores)
                last = {"step": step, "scores": scores}
                if select is not None:
                    if select not in scores:
                        raise KeyError(f"select metric {select!r} not among {sorted(scores)}")
                    if scores[select] > best["value"]:
                        best = {"step": step, "value": scores[select], "scores": scores}
                        save_relation(workdir / RELATION_BEST_DIR, state.params, state.batch_stats)
                ckpt.save(step, _host_tree(state), metadata={"best": best, "last": last}, metrics=scores,
                          force=True)
                progress.note(_epoch_line(step, steps_per_epoch, scores, select, best))
        if ckpt.latest_step() != int(state.step):
            ckpt.save(int(state.step), _host_tree(state), metadata={"best": best, "last": last}, force=True)
        save_relation(workdir / RELATION_DIR, state.params, state.batch_stats)
    finally:
        close_run(progress, ckpt, writer, batches)
    summary = {
        "final_step": int(state.step), "final_scores": last["scores"],
        "select": select, "best_step": best["step"],
        "best_value": best["value"] if best["step"] is not None else None, "best_scores": best["scores"],
        "relation_dir": str(workdir / RELATION_DIR),
        "relation_best_dir": str(workdir / RELATION_BEST_DIR) if best["step"] is not None else None,
        "use_images": bool(model.use_images), "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch, "train_seconds": round(time.time() - t0, 1),
    }
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("relation module (last epoch) written to %s: use it as the joint config's model.relation_init",
             summary["relation_dir"])
    return summary


def _epoch_line(step: int, steps_per_epoch: int, scores: Mapping[str, float], select, best) -> str:
    shown = ", ".join(f"{k}={v:.4f}" for k, v in scores.items()
                      if k.endswith(("/accuracy", "/f1")) and k.count("/") == 2)
    line = f"epoch {step / steps_per_epoch:g} (step {step}): {shown}"
    if select is not None:
        line += f" | best {select}={best['value']:.4f} @ step {best['step']}"
    return line
