"""Train either stage: ``python -m launch.train --config=configs/demo.py --workdir=DIR``.

The config's ``task`` picks the stage: the joint model (configs/demo.py,
configs/twitter2015.py, ...) or the relation module on TRC
(configs/trc_relation.py, which writes DIR/relation for the joint config's
model.relation_init). Resumes from the latest checkpoint in DIR when there is
one. Any config field can be overridden: ``--config.num_epochs=3``; a
mistyped field fails.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from jml_jax.train import train_and_evaluate
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and the config go")
_CACHE = common.define_compilation_cache_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    common.setup_logging()
    common.init_processes()
    common.enable_compilation_cache(_CACHE.value)
    config = _CONFIG.value
    common.resolve_config_paths(config)
    common.record_command(_WORKDIR.value)
    summary = train_and_evaluate(
        config, _WORKDIR.value, common.train_data(config), common.eval_splits(config, config.eval_splits)
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
