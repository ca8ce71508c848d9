"""The training loop of both stages: `train_and_evaluate(config, workdir, train_data, eval_splits)`.

One readable trainer; what differs between the joint model and the relation
module lives in a task object (jml_jax/tasks.py), everything built before
step 1 in jml_jax/experiment.py:

  1. the schedule from the training set's size; the experiment (mesh, task,
     optimizer, abstract state, shardings), built once;
  2. resume from the latest checkpoint in ``workdir`` if there is one (restored
     straight into the shardings, no init compiled), else the initial state
     with the task's pretrained pieces;
  3. steps: per-process NumPy batches -> exactly the task's training inputs
     (jml_jax/contract.py) -> global arrays -> jitted train step.
     The loop never waits for the device between steps: step metrics stay on
     the device and are fetched at log, eval and checkpoint steps. The step
     refuses a non-finite update (the state stays as it was), and every fetch
     checks the flags, so a run stops at the first fetch after a bad step and
     never saves anything non-finite;
  4. every ``steps_per_epoch / eval_per_epoch`` steps after the first
     ``eval_start_fraction`` of training: score every eval split
     (jml_jax/scoring.py, the keys `launch.evaluate` reports too), log, and keep
     the best step by ``select_split/select_metric`` (strictly greater, §7.4:
     dev selects, test never does); the task exports what it hands on;
  5. resumable checkpoints of the whole state every ``checkpoint_every_steps``
     and at the end (asynchronous, keep-N, carrying the best and last scores);
     an evaluation that improves writes only the model (``<workdir>/best``, no
     optimizer state), so evaluating often costs no full saves;
  6. on a cluster: one live run per workdir (jml_jax/workdir_lock.py); on
     SIGTERM/SIGINT the current step is saved and `Preempted` raised
     (jml_jax/preemption.py), so the same command resumes with nothing lost.

The loop takes any iterator of NumPy batches, so nothing here imports
TensorFlow: `TrainData` and the eval splits are built by the launcher from
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
import numpy as np

from jml_jax import contract
from jml_jax.checkpointing import Checkpointer
from jml_jax.evaluators import EvalSplit, validate_eval_setup
from jml_jax.experiment import build_experiment
from jml_jax.mesh import describe_mesh
from jml_jax.preemption import Preempted, PreemptionWatch, clear_preempted, mark_preempted
from jml_jax.progress import Progress
from jml_jax.scoring import run_evals, score_key
from jml_jax.sharding import global_batch_from_process_local
from jml_jax.summary import MetricWriter
from jml_jax.train_state import make_finite_check
from jml_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient; nothing was saved from it."""


@dataclasses.dataclass
class TrainData:
    """make_iter(start_step) -> iterator of per-process batches; the stream
    must be a pure function of the step, so resuming at ``start_step`` sees
    what an uninterrupted run would."""

    make_iter: Callable[[int], Iterator[dict]]
    num_examples: int
    # What data preparation replaced or cut (image fallbacks, truncated gold
    # aspects; data_pipeline PreparedSplit.data_counts), saved with the run.
    data_counts: dict | None = None


@dataclasses.dataclass
class Schedule:
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    eval_start: int
    t_total: int  # the learning-rate schedule's length (optimizer.t_total)

    @classmethod
    def from_config(cls, config, num_examples: int) -> "Schedule":
        steps_per_epoch = num_examples // config.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"{num_examples} training examples do not fill one batch of {config.batch_size}"
            )
        total = steps_per_epoch * config.num_epochs
        if config.get("max_steps"):
            total = min(total, int(config.max_steps))
        eval_every = max(1, steps_per_epoch // max(1, config.eval_per_epoch))
        mode = config.optimizer.get("t_total", "steps")
        if mode not in ("original", "steps"):
            raise ValueError(f"optimizer.t_total={mode!r}; valid: 'original', 'steps'")
        # §8: the original's t_total counts a partial last batch per epoch too.
        t_total = int(num_examples / config.batch_size * config.num_epochs) if mode == "original" else total
        return cls(steps_per_epoch, total, eval_every, int(total * config.eval_start_fraction), max(1, t_total))

    def is_eval_step(self, step: int) -> bool:
        return (step % self.eval_every == 0 or step == self.total_steps) and step > self.eval_start


class _PendingMetrics:
    """Step metrics still on the device, fetched together (one host sync)."""

    def __init__(self):
        self._items: list[tuple[int, Any]] = []

    def add(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._items.append((step, metrics))

    def fetch(self) -> list[tuple[int, dict[str, float]]]:
        """``[(step, {name: float})]`` of every pending step; raises
        `NonFiniteLossError` naming the first step whose update was refused."""
        items, self._items = self._items, []
        if not items:
            return []
        host = jax.device_get([m for _, m in items])
        out = []
        for (step, _), metrics in zip(items, host):
            if not bool(metrics["is_finite"]):
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {step}; the update was not applied "
                    f"and nothing was saved from it")
            out.append((step, {k: float(np.asarray(v)) for k, v in metrics.items()}))
        return out


def close_run(progress, ckpt: Checkpointer, writer, batches) -> None:
    """End of the loop, normal or not: the progress line, pending asynchronous
    saves, the checkpoint manager, the metric writer and the batch iterator."""
    progress.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
    if hasattr(batches, "close"):
        batches.close()


def _select_key(config) -> str | None:
    split = config.get("select_split")
    return score_key(split, config.select_metric) if split else None


def train_and_evaluate(config, workdir: str | pathlib.Path, train_data: TrainData,
                       eval_splits: Mapping[str, EvalSplit], *, devices=None,
                       allow_fresh_start: bool = False, preemption: PreemptionWatch | None = None) -> dict:
    """Trains, evaluates and checkpoints either stage; returns the run's summary.

    The summary (also ``workdir/summary.json``): ``task``, ``select``,
    ``best_step``/``best_value``/``best_scores`` (None / {} without a select
    split), ``final_step``/``final_scores`` (the last evaluation),
    ``total_steps``, ``steps_per_epoch``, ``train_seconds`` (of every process
    of a resumed run, up to each one's last save) and what the task exported
    (the relation stage: ``relation_dir``, ``relation_best_dir``,
    ``use_images``). ``devices``: the devices of the mesh (default: all).
    ``allow_fresh_start``: start from step 0 although every checkpoint of the
    workdir was set aside as damaged (refused otherwise, on every rerun).
    ``preemption``: a `PreemptionWatch` the caller entered already (default:
    a new one for the run).

    Raises `WorkdirLockedError` when another live run holds ``workdir``, and
    `Preempted` after saving the current step on SIGTERM/SIGINT.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir), (preemption or PreemptionWatch()) as preemption:
        return _train_and_evaluate(config, workdir, train_data, eval_splits, devices=devices,
                                   allow_fresh_start=allow_fresh_start, preemption=preemption)


def _train_and_evaluate(config, workdir: pathlib.Path, train_data: TrainData,
                        eval_splits: Mapping[str, EvalSplit], *, devices, allow_fresh_start: bool,
                        preemption: PreemptionWatch) -> dict:
    """`train_and_evaluate` with the workdir locked and the signals watched."""
    schedule = Schedule.from_config(config, train_data.num_examples)
    exp = build_experiment(config, devices=devices, num_train_steps=schedule.t_total,
                           steps_per_epoch=schedule.steps_per_epoch)
    task = exp.task
    select = _select_key(config)
    validate_eval_setup(config, task, eval_splits, exp.mesh)
    log.info("%s task; mesh %s; %d steps (%d per epoch), eval every %d after step %d", task.name,
             describe_mesh(exp.mesh), schedule.total_steps, schedule.steps_per_epoch,
             schedule.eval_every, schedule.eval_start)
    # Resumable checkpoints (full state) every checkpoint_every_steps and at the
    # end; the best model by select (params and batch_stats only) beside them.
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    empty_best = {"step": None, "value": -math.inf, "scores": {}}
    finite = make_finite_check(exp.mesh)
    clear_preempted(workdir)
    _write_data_counts(workdir, train_data, eval_splits)
    # A latest step whose data files are damaged (unreadable, or NaN where
    # bytes were flipped) is set aside and the previous good step resumes.
    restored = ckpt.restore_or_none(exp.abstract_state,
                                    check=lambda st: bool(finite((st.params, st.batch_stats, st.opt_state))),
                                    allow_fresh_start=allow_fresh_start)
    # Training time of the earlier processes of this run, up to their last save.
    earlier_seconds = 0.0
    pretrained_inputs = None
    if restored is not None:
        state, meta = restored
        best = meta.get("best", empty_best)
        last = meta.get("last", {"step": None, "scores": {}})
        earlier_seconds = float(meta.get("train_seconds", 0.0))
        log.info("resumed from step %d in %s", int(state.step), workdir)
    else:
        pieces, pretrained_inputs = task.pretrained(exp.abstract_variables)
        state = exp.initial_state(pieces)
        best, last = empty_best, {"step": None, "scores": {}}
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    train_data, eval_splits = task.prepare_inputs(exp, train_data, eval_splits, workdir=workdir,
                                                  pretrained_inputs=pretrained_inputs)
    del pretrained_inputs
    train_step = exp.make_train_step()
    evaluator = exp.make_evaluator()
    exported: dict[str, Any] = {}

    def check_finite(step, state):
        if not bool(finite((state.params, state.batch_stats))):
            raise NonFiniteLossError(
                f"the parameters are not finite after step {step} although its loss and gradients "
                f"were (an optimizer setting such as the learning rate?); step {step} was not saved"
            )

    def save(step, state, **kwargs):
        check_finite(step, state)
        ckpt.save(step, state, metadata={"best": best, "last": last,
                                         "train_seconds": earlier_seconds + time.time() - t0}, **kwargs)

    writer = MetricWriter(workdir)
    pending = _PendingMetrics()
    inputs = exp.inputs(train=True)  # the task's statement of what a training batch sends

    def flush():
        fetched = pending.fetch()
        if fetched:
            progress.update(fetched[-1][0], loss=fetched[-1][1]["loss"])
        for step, metrics in fetched:
            if step % config.log_every_steps == 0 or step == schedule.total_steps:
                writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})

    start = int(state.step)
    batches = train_data.make_iter(start)
    progress = Progress(schedule.total_steps, start=start, unit_examples=config.batch_size)
    t0 = time.time()
    try:
        for step in range(start + 1, schedule.total_steps + 1):
            batch = next(batches)
            model_batch = contract.take(batch, inputs, f"the {task.name} task's training step")
            state, metrics = train_step(state, global_batch_from_process_local(model_batch, exp.mesh))
            pending.add(step, metrics)
            progress.update(step)
            is_eval = schedule.is_eval_step(step)
            if is_eval or step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0:
                flush()
            if is_eval:
                scores = run_evals(evaluator, state, eval_splits)
                writer.write_scalars(step, {**scores, "epoch": step / schedule.steps_per_epoch})
                last = {"step": step, "scores": scores}
                if select is not None and scores[select] > best["value"]:
                    check_finite(step, state)
                    best = {"step": step, "value": scores[select], "scores": scores}
                    ckpt.save_best(step, {"params": state.params, "batch_stats": state.batch_stats}, scores)
                    exported.update(task.export(workdir, state, event="best"))
                progress.note(_eval_line(step, schedule, scores, select, best))
            if step % config.checkpoint_every_steps == 0:
                save(step, state)
            if preemption.should_stop(step):  # every process stops at the same step
                flush()
                if ckpt.latest_step() != step:
                    save(step, state, force=True)
                ckpt.wait()
                mark_preempted(workdir, step, preemption.signal_name)
                log.warning("%s: saved step %d of %d in %s; rerun the same command to resume",
                            preemption.signal_name or "preemption notice", step, schedule.total_steps,
                            workdir / "checkpoints")
                raise Preempted(step, preemption.signal_name, workdir)
        flush()
        if ckpt.latest_step() != int(state.step):
            save(int(state.step), state, force=True)
        exported.update(task.export(workdir, state, event="end"))
    finally:
        close_run(progress, ckpt, writer, batches)
    summary = {
        "task": task.name, "select": select, "best_step": best["step"],
        "best_value": best["value"] if best["step"] is not None else None, "best_scores": best["scores"],
        "final_step": int(state.step), "final_scores": last["scores"],
        "total_steps": schedule.total_steps, "steps_per_epoch": schedule.steps_per_epoch,
        "train_seconds": round(earlier_seconds + time.time() - t0, 1), **exported,
        "data_counts": _data_counts(train_data, eval_splits),
    }
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if select is not None:
        log.info("best %s = %.4f at step %s", select, best["value"], best["step"])
    return summary


def _data_counts(train_data: TrainData, eval_splits: Mapping[str, EvalSplit]) -> dict:
    counts = {"train": train_data.data_counts} if train_data.data_counts else {}
    counts.update({name: split.data_counts for name, split in eval_splits.items() if split.data_counts})
    return counts


def _write_data_counts(workdir: pathlib.Path, train_data, eval_splits) -> None:
    """``workdir/data_counts.json``: per split, what the data preparation
    skipped (malformed records, data.on_error='skip'), replaced (images) or
    cut (gold aspects past max_seq_length)."""
    counts = _data_counts(train_data, eval_splits)
    if counts and jax.process_index() == 0:
        (workdir / "data_counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    for name, c in counts.items():
        lost = {k: c[k] for k in ("records_skipped", "image_fallbacks", "gold_aspects_truncated") if c.get(k)}
        if lost:
            log.warning("%s split: %s (details in %s)", name, lost, workdir / "data_counts.json")


def _eval_line(step: int, schedule: Schedule, scores: Mapping[str, float], select, best) -> str:
    shown = ", ".join(f"{k}={v:.4f}" for k, v in scores.items()
                      if k.endswith(("/f1", "/acc", "/accuracy")) and k.count("/") <= 2)
    line = f"epoch {step / schedule.steps_per_epoch:g} (step {step}): {shown}"
    if select is not None:
        line += f" | best {select}={best['value']:.4f} @ step {best['step']}"
    return line
