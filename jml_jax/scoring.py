"""Scoring a run: a state over eval splits with one key rule, restoring a run's checkpoint, sweeps.

The upper layer of evaluation (the evaluators themselves are
jml_jax/evaluators.py). Training's periodic scores (`run_evals`, called by
jml_jax/train.py), `evaluate_checkpoint` (launch/evaluate.py) and
`sweep_thresholds` all name scores by `score_key`, so the same split gets the
same keys everywhere: ``<split>/<metric>``, except that the training set
scored as an eval split (configs/trc_relation.py:full) is ``train_set/...``,
apart from the step metrics that training logs as ``train/...``.

`restore_for_eval` restores a run's checkpoint ('best': ``<workdir>/best``,
what the training loop keeps; 'latest' or a step: ``<workdir>/checkpoints``)
into this machine's mesh, whatever mesh wrote it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Mapping

import jax
import numpy as np

from jml_jax.checkpointing import BestModel, Checkpointer, CheckpointError
from jml_jax.evaluators import EvalSplit, write_predictions
from jml_jax.experiment import build_experiment
from jml_jax.train_state import make_finite_check

log = logging.getLogger(__name__)

DATA_COUNT_KEYS = ("gold_aspects_truncated", "sentences_kept_without_gold_targets", "image_fallbacks")


def score_prefix(split_name: str) -> str:
    """The prefix of a split's scores: its name, except that the training set
    scored as an eval split (configs/trc_relation.py:full) is 'train_set', apart
    from the step metrics training logs as 'train/...'."""
    return "train_set" if split_name == "train" else split_name


def score_key(split_name: str, metric: str) -> str:
    """``<prefix>/<metric>``: the one name of a split's metric in logs, summaries and results."""
    return f"{score_prefix(split_name)}/{metric}"


def score_splits(evaluator, state, eval_splits: Mapping[str, EvalSplit], *, decode=None,
                 on_predictions=None) -> dict[str, float]:
    """Scores every split with ``evaluator`` (decoded with ``decode``, default
    the evaluator's own); returns ``{score_key(split, metric): value}``.
    ``on_predictions(name, split, predictions)`` sees each split's raw predictions."""
    scores: dict[str, float] = {}
    for name, split in eval_splits.items():
        split_scores, pred = (evaluator.evaluate(state, split) if decode is None
                              else evaluator.evaluate(state, split, decode))
        scores.update({score_key(name, k): float(v) for k, v in split_scores.items()})
        if on_predictions is not None:
            on_predictions(name, split, pred)
    return scores


def run_evals(evaluator, state, eval_splits: Mapping[str, EvalSplit]) -> dict[str, float]:
    """Training's periodic scores: `score_splits` with the evaluator's decoding."""
    return score_splits(evaluator, state, eval_splits)


def restore_for_eval(config, workdir, which="best", *, devices=None):
    """``(experiment, state)``: the run's checkpoint ``which`` ('best', 'latest'
    or a step) restored into this machine's mesh (``config.mesh_shape`` over
    ``devices``), whatever mesh wrote it. Nothing is initialised."""
    runs_dir = pathlib.Path(workdir) / "runs"
    if which == "best" and runs_dir.is_dir() and not (pathlib.Path(workdir) / "best").exists():
        names = sorted(p.name for p in runs_dir.iterdir() if p.is_dir())
        raise CheckpointError(pathlib.Path(workdir) / "best",
                              f"{workdir} holds a population (runs.seeds): each run keeps its own best model; "
                              f"evaluate one run, e.g. --workdir={runs_dir / (names[0] if names else 'seed_<seed>')} "
                              "with that run's seed (its config.json)")
    exp = build_experiment(config, devices=devices)
    # create=False: a mistyped workdir is an error, not a new empty folder.
    # 'best' needs no checkpoints/ folder: a population's run folder has only best/.
    ckpt = (BestModel(pathlib.Path(workdir), create=False) if which == "best"
            else Checkpointer(pathlib.Path(workdir), keep=config.keep_checkpoints, create=False))
    try:
        if which == "best":  # the model kept by the training loop's save_best
            variables, meta = ckpt.restore_best(exp.abstract_variables)
            state = exp.abstract_state.replace(step=np.int32(meta["step"]), params=variables["params"],
                                               batch_stats=variables["batch_stats"], opt_state=None, rng=None)
        else:
            state, _ = ckpt.restore(which, exp.abstract_state)
    finally:
        ckpt.close()
    if not bool(make_finite_check(exp.mesh)((state.params, state.batch_stats))):
        raise CheckpointError(ckpt.directory / str(int(state.step)),
                              f"checkpoint {which!r} (step {int(state.step)}) holds non-finite parameters: "
                              "its data files are damaged")
    return exp, state


def _restored_for_scoring(config, workdir, eval_splits, which, devices):
    """``(experiment, state, evaluator, eval_splits)`` with the task's inputs added."""
    exp, state = restore_for_eval(config, workdir, which, devices=devices)
    _, eval_splits = exp.task.prepare_inputs(exp, None, eval_splits, workdir=workdir)
    return exp, state, exp.make_evaluator(), eval_splits


def evaluate_checkpoint(config, workdir, eval_splits: Mapping[str, EvalSplit], *, which="best",
                        predictions_dir: str | pathlib.Path | None = None, devices=None) -> dict[str, float]:
    """Restores ``which`` ('best', 'latest' or a step) and scores every split,
    with the keys training logs (`score_key`), plus ``step`` and each split's
    ``<prefix>/data/<count>``.

    Writes ``<predictions_dir>/<split>_predictions.jsonl`` (joint model) when asked.
    """
    exp, state, evaluator, eval_splits = _restored_for_scoring(config, workdir, eval_splits, which, devices)

    def write(name, split, pred):
        if predictions_dir is not None and split.features is not None and jax.process_index() == 0:
            write_predictions(pathlib.Path(predictions_dir) / f"{name}_predictions.jsonl", split, pred)

    scores: dict[str, float] = {"step": float(int(state.step))}
    scores.update(score_splits(evaluator, state, eval_splits, on_predictions=write))
    for name, split in eval_splits.items():
        for key in DATA_COUNT_KEYS:
            if split.data_counts and key in split.data_counts:
                scores[score_key(name, f"data/{key}")] = float(split.data_counts[key])
    return scores


def sweep_thresholds(config, workdir, eval_splits: Mapping[str, EvalSplit], thresholds, *,
                     which="best", devices=None) -> list[dict[str, float]]:
    """Scores one joint checkpoint at several decoding thresholds (start + end logit, §6).

    The checkpoint is restored and the eval functions compiled once; each
    threshold's decoding is passed to the evaluator, which is left as it was.
    Choose a threshold on dev; a test score read off this sweep at the
    dev-chosen threshold is a fair test score, the best test row is not.

    Returns:
      one dict per threshold, in the given order: ``threshold``, ``step`` and
      `score_key` ``(split, metric)`` for every split.
    """
    if not thresholds:
        raise ValueError("sweep_thresholds needs at least one threshold")
    exp, state, evaluator, eval_splits = _restored_for_scoring(config, workdir, eval_splits, which, devices)
    if not exp.task.decodes_spans:
        raise ValueError("threshold sweeps score span decoding: they need a joint-model config")
    base = evaluator.decode_config
    rows = []
    for threshold in thresholds:
        decode = dataclasses.replace(base, logit_threshold=float(threshold))
        row = {"threshold": float(threshold), "step": float(int(state.step))}
        row.update(score_splits(evaluator, state, eval_splits, decode=decode))
        log.info("threshold %g: %s", threshold, ", ".join(
            f"{score_key(n, 'joint_orig/f1')} {row[score_key(n, 'joint_orig/f1')]:.4f}" for n in eval_splits))
        rows.append(row)
    return rows
