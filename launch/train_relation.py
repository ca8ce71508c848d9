"""Stage one, the relation module on TRC:
``python -m launch.train_relation --config=configs/trc_relation.py --workdir=workdirs/trc_relation``.

Writes ``<workdir>/relation`` (the joint config's model.relation_init) and
``<workdir>/relation_best``; resumes from the latest checkpoint in the work
directory. Any config field can be overridden: ``--config.num_epochs=3``.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags
from ml_collections import config_flags

from jml_jax.relation_train import train_relation
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "relation config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where the relation module, checkpoints and logs go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    common.setup_logging()
    common.init_processes()
    config = _CONFIG.value
    if config.data.name != "trc":
        raise app.UsageError(f"launch.train_relation needs a TRC config (data.name='trc'), got {config.data.name!r}")
    common.resolve_config_paths(config)
    image_dir = config.data.image_dir
    if config.model.use_images and not (image_dir and pathlib.Path(image_dir).is_dir()):
        raise app.UsageError(
            f"model.use_images is True but data.image_dir={image_dir!r} is not a folder; the TRC images "
            "come with the JML authors' release. Without them, train text-only: "
            "--config=configs/trc_relation.py:text_only")
    summary = train_relation(
        config, _WORKDIR.value, common.train_data(config), common.relation_eval_splits(config, config.eval_splits)
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
