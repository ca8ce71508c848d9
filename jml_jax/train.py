"""The training loop: `train_and_evaluate(config, workdir, data)`.

One readable trainer (eval_shape -> shardings -> jitted init -> jitted step):

  1. mesh from ``config.mesh_shape``; logical-axis rules from ``config.axis_rules``;
  2. the model, the optimizer (frozen parts: no state) and the sharded state;
  3. resume from the latest checkpoint in ``workdir`` if there is one, else
     place the configured pretrained weights;
  4. steps: per-process NumPy batches -> global arrays -> jitted train step
     (gradient accumulation inside); progress line with loss, examples/s, ETA;
  5. every ``steps_per_epoch / eval_per_epoch`` steps after the first
     ``eval_start_fraction`` of training: score every eval split, log, and save
     the best checkpoint by ``select_split/select_metric`` (strictly greater,
     §7.4: dev selects, test never does);
  6. periodic checkpoints (asynchronous, keep-N) carrying the data position.

The loop takes any iterator of NumPy batches, so nothing here imports
TensorFlow: `TrainData` and `EvalSplit` are built by the launcher from
data_pipeline/ (or by tests from anything).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jml_jax import losses, model_factory, optim
from jml_jax.checkpointing import Checkpointer
from jml_jax.decode import DecodeConfig
from jml_jax.evaluate import EvalSplit, Evaluator, write_predictions
from jml_jax.mesh import describe_mesh, make_mesh
from jml_jax.progress import Progress
from jml_jax.sharding import batch_sharding, global_batch_from_process_local, normalize_rules, replicated
from jml_jax.steps import make_train_step
from jml_jax.summary import MetricWriter
from jml_jax.train_state import create_sharded_state

log = logging.getLogger(__name__)

TRAIN_KEYS = (
    "input_ids", "input_mask", "start_positions", "end_positions",
    "span_starts", "span_ends", "polarity_labels", "span_mask",
)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient; nothing was saved from it."""


@dataclasses.dataclass
class TrainData:
    """make_iter(start_step) -> iterator of per-process batches; the stream
    must be a pure function of the step, so resuming at ``start_step`` sees
    what an uninterrupted run would."""

    make_iter: Callable[[int], Iterator[dict]]
    num_examples: int


@dataclasses.dataclass
class Schedule:
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    eval_start: int

    @classmethod
    def from_config(cls, config, num_examples: int) -> "Schedule":
        steps_per_epoch = num_examples // config.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"{num_examples} training examples do not fill one batch of {config.batch_size}"
            )
        total = steps_per_epoch * config.num_epochs
        if config.max_steps:
            total = min(total, int(config.max_steps))
        eval_every = max(1, steps_per_epoch // max(1, config.eval_per_epoch))
        return cls(steps_per_epoch, total, eval_every, int(total * config.eval_start_fraction))

    def is_eval_step(self, step: int) -> bool:
        return (step % self.eval_every == 0 or step == self.total_steps) and step > self.eval_start


def frozen_prefixes(model_config) -> tuple[str, ...]:
    """Top-level parameter groups that get no update and no optimizer state."""
    frozen = []
    if model_config.use_images:
        frozen.append("relation")  # always frozen in the joint model (§2.5)
        if not model_config.train_main_resnet:
            frozen.append("resnet")
    return tuple(frozen)


def make_loss_fn(model, jml_config):
    """``(params, batch_stats, batch, rng, train) -> (loss, (aux, new_stats))``."""
    update_bn = jml_config.use_images and jml_config.train_main_resnet

    def loss_fn(params, batch_stats, batch, rng, train):
        variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
        mutable = ["batch_stats"] if (train and update_bn) else False
        result = model.apply(
            variables, batch["input_ids"], batch["input_mask"], batch["span_starts"],
            batch["span_ends"], batch.get("image"), deterministic=not train, train=train,
            rngs={"dropout": rng}, mutable=mutable,
        )
        out, new_vars = result if mutable else (result, {})
        loss, aux = losses.jml_loss(
            out["start_logits"], out["end_logits"], batch["start_positions"], batch["end_positions"],
            out["polarity_logits"], batch["polarity_labels"], batch["span_mask"],
            boundary_mask=batch["input_mask"] if jml_config.mask_attention else None,
        )
        aux = {k: v for k, v in aux.items() if k != "loss"}  # the step reports the loss itself
        return loss, (aux, new_vars.get("batch_stats", batch_stats))

    return loss_fn


def decode_config_from(config) -> DecodeConfig:
    d = config.decode
    return DecodeConfig(
        n_best_size=d.n_best_size, max_answer_length=d.max_answer_length,
        logit_threshold=d.logit_threshold, max_spans=d.max_spans,
    )


@dataclasses.dataclass
class Setup:
    """Everything built from a config before the first step."""

    mesh: Any
    model: Any
    tx: Any
    state: Any  # None when built with init_state=False
    shardings: Any
    rules: Any
    abstract_state: Any
    init_fn: Any = None  # rng -> variables, for `init_state`
    seed: int = 0

    def init_state(self):
        """A freshly initialised sharded state (jitted init, compiled once per mesh)."""
        state, _ = create_sharded_state(self.init_fn, self.tx, self.mesh, self.rules, jax.random.PRNGKey(self.seed))
        return state


def setup(config, *, num_train_steps: int | None = None, devices=None, init_state: bool = True) -> Setup:
    """Mesh, model, optimizer and (with ``init_state``) a freshly initialised sharded state.

    Args:
      devices: the devices the mesh covers (default: all of them); e.g.
        ``jax.devices()[:1]`` with ``config.mesh_shape=(1, 1, 1)`` evaluates a
        checkpoint written on many devices on one.
      init_state: ``False`` leaves ``state`` None: a caller that restores a
        checkpoint into ``abstract_state`` skips compiling the model's init.
    """
    mesh = make_mesh(tuple(config.mesh_shape), devices=devices)
    rules = normalize_rules(config.axis_rules, mesh)
    model = model_factory.build_model(config)
    abstract = model_factory.abstract_variables(model, config)
    opt_cfg = dict(config.optimizer.to_dict())
    opt_cfg["frozen_prefixes"] = frozen_prefixes(model.config)
    opt_cfg.pop("grad_accum_steps", None)
    tx = optim.make_optimizer(opt_cfg, abstract["params"], num_train_steps)
    init_fn = model_factory.make_init_fn(model, config)
    from jml_jax.train_state import abstract_sharded_state

    abstract_state, shardings = abstract_sharded_state(init_fn, tx, mesh, rules)
    s = Setup(mesh, model, tx, None, shardings, rules, abstract_state, init_fn, int(config.seed))
    if init_state:
        s.state = s.init_state()
    return s


def make_finite_check(mesh) -> Callable[[Any], jax.Array]:
    """Jitted ``tree -> bool`` (replicated on ``mesh``): every float leaf is finite.

    The train step refuses updates whose loss or gradients are not finite, but
    finite gradients can still give non-finite parameters (a NaN or infinite
    learning rate); the loop checks before each save so no checkpoint holds them.
    """

    def all_finite(tree):
        ok = jnp.array(True)
        for x in jax.tree.leaves(tree):
            if jnp.issubdtype(x.dtype, jnp.inexact):
                ok = ok & jnp.all(jnp.isfinite(x))
        return ok

    return jax.jit(all_finite, out_shardings=replicated(mesh))


def _host_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def close_run(progress, ckpt: Checkpointer, writer, batches) -> None:
    """End of a training loop, normal or not: the progress line, pending
    asynchronous saves, the checkpoint manager, the metric writer and the
    batch iterator (when it has a ``close``)."""
    progress.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
    if hasattr(batches, "close"):
        batches.close()


def train_and_evaluate(config, workdir: str | pathlib.Path, train_data: TrainData, eval_splits: Mapping[str, EvalSplit],
                       *, devices=None) -> dict:
    """Trains, evaluates and checkpoints; returns the summary of the best step.

    The summary (also written to ``workdir/summary.json``): best step, its
    scores on every eval split, total steps and wall time. ``devices``: the
    devices of the mesh (default: all).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    schedule = Schedule.from_config(config, train_data.num_examples)
    # The state is initialised only when there is no checkpoint to resume.
    s = setup(config, num_train_steps=schedule.total_steps, devices=devices, init_state=False)
    log.info("mesh %s; %d steps (%d per epoch), eval every %d after step %d",
             describe_mesh(s.mesh), schedule.total_steps, schedule.steps_per_epoch,
             schedule.eval_every, schedule.eval_start)
    select = f"{config.select_split}/{config.select_metric}"
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, best_metric=select)
    restored = ckpt.restore_or_none(s.abstract_state)
    if restored is not None:
        state, meta = restored
        best = meta.get("best", {"step": None, "value": -math.inf, "scores": {}})
        log.info("resumed from step %d in %s", int(state.step), workdir)
    else:
        pieces = model_factory.load_pretrained(config, s.model, model_factory.abstract_variables(s.model, config))
        state = model_factory.place_pretrained(s.init_state(), pieces, s.shardings)
        best = {"step": None, "value": -math.inf, "scores": {}}
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    train_step = make_train_step(
        make_loss_fn(s.model, s.model.config), s.tx, s.shardings, batch_sharding(s.mesh),
        grad_accum_steps=config.optimizer.grad_accum_steps, rules=s.rules,
    )
    evaluator = Evaluator(s.model, s.mesh, s.shardings, decode_config_from(config))
    finite = make_finite_check(s.mesh)

    def save(step, state, **kwargs):
        if not bool(finite((state.params, state.batch_stats))):
            raise NonFiniteLossError(
                f"the parameters are not finite after step {step} although its loss and gradients "
                f"were (an optimizer setting such as the learning rate?); step {step} was not saved"
            )
        ckpt.save(step, state, **kwargs)

    writer = MetricWriter(workdir)
    start = int(state.step)
    batches = train_data.make_iter(start)
    progress = Progress(schedule.total_steps, start=start, unit_examples=config.batch_size)
    t0 = time.time()
    try:
        for step in range(start + 1, schedule.total_steps + 1):
            batch = next(batches)
            gbatch = global_batch_from_process_local({k: batch[k] for k in _model_keys(batch)}, s.mesh)
            state, metrics = train_step(state, gbatch)
            loss = float(metrics["loss"])
            if not bool(metrics["is_finite"]):
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {step} (batch rows "
                    f"{np.asarray(batch.get('row', batch.get('example_index', []))).tolist()}); "
                    f"the update was not applied and nothing was saved from it"
                )
            progress.update(step, loss=loss)
            if step % config.log_every_steps == 0 or step == schedule.total_steps:
                writer.write_scalars(step, {f"train/{k}": v for k, v in _host_metrics(metrics).items()})
            if schedule.is_eval_step(step):
                scores = run_evals(evaluator, state, eval_splits, writer, step)
                value = scores.get(select)
                if value is None:
                    raise KeyError(f"select metric {select!r} not among {sorted(scores)}")
                improved = value > best["value"]
                if improved:
                    best = {"step": step, "value": value, "scores": scores}
                save(step, state, metadata={"best": best}, metrics=scores if improved else None, force=True)
                progress.note(f"step {step}: {select}={value:.4f} (best {best['value']:.4f} @ {best['step']})")
            elif step % config.checkpoint_every_steps == 0:
                save(step, state, metadata={"best": best})
        if ckpt.latest_step() != int(state.step):
            save(int(state.step), state, metadata={"best": best}, force=True)
    finally:
        close_run(progress, ckpt, writer, batches)
    summary = {
        "best_step": best["step"], "select": select, "best_value": best["value"],
        "best_scores": best["scores"], "total_steps": schedule.total_steps,
        "train_seconds": round(time.time() - t0, 1),
    }
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("best %s = %.4f at step %s", select, best["value"], best["step"])
    return summary


def _model_keys(batch: Mapping[str, Any]) -> list[str]:
    keys = [k for k in TRAIN_KEYS if k in batch]
    if "image" in batch:
        keys.append("image")
    return keys


def run_evals(evaluator: Evaluator, state, eval_splits: Mapping[str, EvalSplit], writer, step: int) -> dict[str, float]:
    """Scores every split; returns ``{'<split>/<metric>': value}``."""
    scores: dict[str, float] = {}
    for name, split in eval_splits.items():
        split_scores, _ = evaluator.evaluate(state, split)
        scores.update({f"{name}/{k}": float(v) for k, v in split_scores.items()})
    writer.write_scalars(step, scores)
    return scores


def _restore_for_eval(config, workdir, which, devices):
    s = setup(config, num_train_steps=1, devices=devices, init_state=False)
    # create=False: a mistyped workdir is an error, not a new empty folder.
    ckpt = Checkpointer(pathlib.Path(workdir), keep=config.keep_checkpoints,
                        best_metric=f"{config.select_split}/{config.select_metric}", create=False)
    try:
        state, _ = ckpt.restore(which, s.abstract_state)
    finally:
        ckpt.close()
    return s, state


def evaluate_checkpoint(config, workdir, eval_splits: Mapping[str, EvalSplit], *, which: str = "best",
                        predictions_dir: str | pathlib.Path | None = None, devices=None) -> dict[str, float]:
    """Restores ``which`` ('best', 'latest' or a step) and scores every split.

    Restores into this run's mesh and shardings (``config.mesh_shape`` over
    ``devices``, default all), whatever mesh wrote it.
    Writes ``<predictions_dir>/<split>_predictions.jsonl`` when asked.
    """
    s, state = _restore_for_eval(config, workdir, which, devices)
    evaluator = Evaluator(s.model, s.mesh, s.shardings, decode_config_from(config))
    scores: dict[str, float] = {"step": float(int(state.step))}
    for name, split in eval_splits.items():
        split_scores, pred = evaluator.evaluate(state, split)
        scores.update({f"{name}/{k}": float(v) for k, v in split_scores.items()})
        if predictions_dir is not None and jax.process_index() == 0:
            write_predictions(pathlib.Path(predictions_dir) / f"{name}_predictions.jsonl", split, pred)
    return scores


def sweep_thresholds(config, workdir, eval_splits: Mapping[str, EvalSplit], thresholds, *,
                     which: str = "best", devices=None) -> list[dict[str, float]]:
    """Scores one checkpoint at several decoding thresholds (start + end logit, §6).

    The checkpoint is restored and the eval functions compiled once. Choose a
    threshold on dev; a test score read off this sweep at the dev-chosen
    threshold is a fair test score, the best test row is not.

    Returns:
      one dict per threshold, in the given order: ``threshold``, ``step`` and
      ``<split>/<metric>`` for every split.
    """
    if not thresholds:
        raise ValueError("sweep_thresholds needs at least one threshold")
    s, state = _restore_for_eval(config, workdir, which, devices)
    base = decode_config_from(config)
    evaluator = Evaluator(s.model, s.mesh, s.shardings, base)
    rows = []
    for threshold in thresholds:
        evaluator.decode_config = dataclasses.replace(base, logit_threshold=float(threshold))
        row = {"threshold": float(threshold), "step": float(int(state.step))}
        for name, split in eval_splits.items():
            split_scores, _ = evaluator.evaluate(state, split)
            row.update({f"{name}/{k}": float(v) for k, v in split_scores.items()})
        log.info("threshold %g: %s", threshold, ", ".join(
            f"{n}/joint_orig/f1 {row[f'{n}/joint_orig/f1']:.4f}" for n in eval_splits))
        rows.append(row)
    return rows
