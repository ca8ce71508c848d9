"""Evaluate a trained run from its checkpoint.

    python -m launch.evaluate --config=configs/demo.py --workdir=DIR [--split=test] [--checkpoint=best]
    python -m launch.evaluate --config=... --workdir=DIR --split=dev --split=test --thresholds=5,6,7,8

Restores the best checkpoint (by dev score) into this machine's mesh, prints
every metric, writes them to ``DIR/eval_results.json`` and the predictions to
``DIR/predictions/<split>_predictions.jsonl``.

With ``--thresholds``, it instead scores the checkpoint at each decoding
threshold (start + end logit; the config's is the original's 8.0), prints a
table and writes ``DIR/threshold_sweep.json``, which `tools.report` shows
beside the run. Pick the threshold on dev, then pass it to training or
evaluation as ``--config.decode.logit_threshold=X``.
"""

from __future__ import annotations

import json
import pathlib

import jax
from absl import app, flags
from ml_collections import config_flags

from jml_jax.scoring import evaluate_checkpoint, score_key, sweep_thresholds
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's folder")
_CACHE = common.define_compilation_cache_flag()
_SPLIT = flags.DEFINE_multi_string("split", ["test"], "split(s) to score: dev, test")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number")
_THRESHOLDS = flags.DEFINE_list("thresholds", None, "decoding thresholds to sweep, e.g. 5,6,7,8")
flags.mark_flags_as_required(["config", "workdir"])

SWEEP_COLUMNS = ("joint_orig/p", "joint_orig/r", "joint_orig/f1", "mate/f1", "masc/acc")


def _parse_thresholds(values) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError as e:
        raise app.UsageError(f"--thresholds takes numbers, got {values}: {e}") from None


def print_sweep(rows, splits) -> None:
    head = ["threshold"] + [score_key(s, c) for s in splits for c in SWEEP_COLUMNS]
    print("  ".join(f"{h:>18}" for h in head))
    for row in rows:
        print("  ".join([f"{row['threshold']:>18g}"] + [f"{row[h]:>18.4f}" for h in head[1:]]))


def main(argv):
    del argv
    common.setup_logging()
    common.init_processes()
    common.enable_compilation_cache(_CACHE.value)
    config = _CONFIG.value
    common.resolve_config_paths(config)
    which = int(_CHECKPOINT.value) if _CHECKPOINT.value.isdigit() else _CHECKPOINT.value
    workdir = pathlib.Path(_WORKDIR.value)
    splits = common.eval_splits(config, _SPLIT.value)
    if _THRESHOLDS.value:
        rows = sweep_thresholds(config, workdir, splits, _parse_thresholds(_THRESHOLDS.value), which=which)
        if jax.process_index() == 0:
            (workdir / "threshold_sweep.json").write_text(json.dumps(
                {"checkpoint": _CHECKPOINT.value, "splits": list(splits), "rows": rows}, indent=2) + "\n")
        print_sweep(rows, list(splits))
        return
    scores = evaluate_checkpoint(
        config, workdir, splits, which=which,
        predictions_dir=workdir / "predictions",
    )
    if jax.process_index() == 0:
        (workdir / "eval_results.json").write_text(json.dumps(scores, indent=2) + "\n")
    width = max(len(k) for k in scores)
    for key, value in scores.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


if __name__ == "__main__":
    app.run(main)
