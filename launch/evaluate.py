"""Evaluate a trained run from its checkpoint.

    python -m launch.evaluate --config=configs/demo.py --workdir=DIR [--split=test] [--checkpoint=best]

Restores the best checkpoint (by dev score) into this machine's mesh, prints
every metric and writes ``DIR/predictions/<split>_predictions.jsonl``.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags
from ml_collections import config_flags

from jml_jax.train import evaluate_checkpoint
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's folder")
_SPLIT = flags.DEFINE_multi_string("split", ["test"], "split(s) to score: dev, test")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    common.setup_logging()
    common.init_processes()
    config = _CONFIG.value
    common.resolve_config_paths(config)
    which = int(_CHECKPOINT.value) if _CHECKPOINT.value.isdigit() else _CHECKPOINT.value
    workdir = pathlib.Path(_WORKDIR.value)
    scores = evaluate_checkpoint(
        config, workdir, common.eval_splits(config, _SPLIT.value), which=which,
        predictions_dir=workdir / "predictions",
    )
    (workdir / "eval_results.json").write_text(json.dumps(scores, indent=2) + "\n")
    width = max(len(k) for k in scores)
    for key, value in scores.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


if __name__ == "__main__":
    app.run(main)
