"""Train either stage: ``python -m launch.train --config=configs/demo.py --workdir=DIR``.

The config's ``task`` picks the stage: the joint model (configs/demo.py,
configs/twitter2015.py, ...) or the relation module on TRC
(configs/trc_relation.py, which writes DIR/relation for the joint config's
model.relation_init). Resumes from the latest checkpoint in DIR when there is
one. Any config field can be overridden: ``--config.num_epochs=3``; a
mistyped field fails.

On a cluster: every config error and missing input is reported before any
data is read; DIR belongs to one live run (a second one is refused, naming
the holder's host and pid); on SIGTERM or SIGINT the current step is saved
and the process exits with status 75 (`jml_jax.preemption.PREEMPTED_EXIT_CODE`),
and rerunning the same command resumes with nothing lost. A workdir whose
checkpoints were all set aside as damaged is not restarted from step 0
without ``--allow_fresh_start``.

Many runs in one program: ``--config.runs.seeds=1,2,3`` (and optionally
``runs.learning_rate``, ``runs.warmup_proportion``, ``runs.weight_decay``,
``runs.decode_threshold``, one value per seed) trains the runs together
(jml_jax/population.py); each is then an ordinary run in DIR/runs/seed_<seed>.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from jml_jax.population import is_population, train_population
from jml_jax.preemption import Preempted, PreemptionWatch
from jml_jax.train import train_and_evaluate
from jml_jax.workdir_lock import WorkdirLock
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and the config go")
_CACHE = common.define_compilation_cache_flag()
_FRESH = flags.DEFINE_bool("allow_fresh_start", False,
                           "train from step 0 although every checkpoint of the workdir was set aside as "
                           "damaged (refused otherwise)")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, *, allow_fresh_start: bool = False) -> dict:
    """Checks every input, locks ``workdir``, loads the data and trains; the summary."""
    common.resolve_config_paths(config)
    common.check_inputs(config)  # before any image is decoded
    # The lock and the signal watch cover the data loading too: a second run
    # stops before decoding images; a signal then stops the run after its first step.
    with WorkdirLock(workdir), PreemptionWatch() as preemption:
        common.record_command(workdir)
        if is_population(config):  # runs.seeds: the runs train together (jml_jax/population.py)
            return train_population(
                config, workdir, common.population_train_data(config),
                common.eval_splits(config, config.eval_splits), allow_fresh_start=allow_fresh_start,
                preemption=preemption)
        return train_and_evaluate(
            config, workdir, common.train_data(config), common.eval_splits(config, config.eval_splits),
            allow_fresh_start=allow_fresh_start, preemption=preemption)


def main(argv):
    del argv
    common.setup_logging()
    common.init_processes()
    common.enable_compilation_cache(_CACHE.value)
    try:
        summary = run(_CONFIG.value, _WORKDIR.value, allow_fresh_start=_FRESH.value)
    except Preempted as stop:
        logging.getLogger("launch.train").warning("%s; exit status %d", stop, stop.exit_code)
        sys.exit(stop.exit_code)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
