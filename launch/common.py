"""What every launch script shares: process setup, config paths, data sources."""

from __future__ import annotations

import logging
import os

import jax

from jml_jax import tasks, weights
from jml_jax.evaluators import EvalSplit
from jml_jax.train import TrainData

log = logging.getLogger(__name__)


def setup_logging() -> None:
    """INFO for this project; Orbax and absl's per-call chatter only from WARNING."""
    from absl import logging as absl_logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    absl_logging.set_verbosity(absl_logging.WARNING)
    for noisy in ("absl", "orbax", "jax._src", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def default_compilation_cache() -> str:
    """``$XDG_CACHE_HOME/jml_jax/xla`` (default ``~/.cache/jml_jax/xla``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jml_jax", "xla")


def enable_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache in ``path`` ('' turns it off): a
    rerun, a resumed run or an evaluation of the same config on the same
    devices loads its compiled steps instead of compiling them again."""
    if not path:
        log.info("persistent compilation cache off")
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    log.info("persistent compilation cache: %s", path)


def define_compilation_cache_flag():
    from absl import flags

    return flags.DEFINE_string("compilation_cache", default_compilation_cache(),
                               "folder of JAX's persistent compilation cache; '' turns it off")


def init_processes() -> None:
    """``jax.distributed.initialize()`` when launched as several processes.

    SLURM (SLURM_NTASKS > 1) and GKE TPU pods (TPU_WORKER_HOSTNAMES) are
    recognised from their environment. Cloud TPU VM pods started with
    ``gcloud compute tpus tpu-vm ssh --worker=all`` have neither variable (JAX
    finds them through the metadata server): set JML_MULTIHOST=1 there, as
    launch/tpu_pod.sh does. JML_MULTIHOST=0 forces a single process. Elsewhere
    set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    forced = os.environ.get("JML_MULTIHOST", "").strip()
    if forced not in ("", "0", "1"):
        raise ValueError(f"JML_MULTIHOST={forced!r}: expected 1 (initialize jax.distributed) or 0 (do not)")
    multi = any(
        os.environ.get(v) for v in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")
    ) and int(os.environ.get("SLURM_NTASKS", os.environ.get("JAX_NUM_PROCESSES", "2"))) > 1
    if (multi and forced != "0") or forced == "1":
        kwargs = {}
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):
            kwargs = dict(
                coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]),
            )
        jax.distributed.initialize(**kwargs)
    log.info("process %d of %d; %d local / %d global devices (%s)", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)


def load_config(spec: str, overrides=()):
    """``PATH[:ARG]`` plus ``--config.FIELD=VALUE`` overrides -> the locked config,
    parsed exactly as ``--config=`` of launch.train (ml_collections' config_flags)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["load_config", f"--config={spec}", *overrides]
    values = flags.FlagValues()
    # sys_argv: the override flags are defined from the arguments they come in.
    config_flags.DEFINE_config_file("config", None, "experiment config file", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    config = values.config
    config.to_dict()  # a file that failed to load raises its error here, not at first use
    return config


def record_command(workdir: str) -> None:
    """Appends the exact command line to ``workdir/command.txt`` (process 0)."""
    import pathlib
    import shlex
    import sys

    if jax.process_index() != 0:
        return
    path = pathlib.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    with (path / "command.txt").open("a", encoding="utf-8") as f:
        f.write("python -m launch.train " + shlex.join(sys.argv[1:]) + "\n")


def resolve_config_paths(config) -> None:
    """Turns aliases such as 'minilm' in data.vocab_file into real paths, and
    runs the task's own config checks (`jml_jax.tasks` ``check_config``: e.g.
    that a relation run with images has its image folder)."""
    if config.data.vocab_file:
        config.data.vocab_file = str(weights.resolve_path(config.data.vocab_file, what="data.vocab_file"))
    tasks.task_class(config).check_config(config)
    if not config.model.use_images and config.data.image_dir:
        log.warning("model.use_images is False: ignoring data.image_dir=%s", config.data.image_dir)
        config.data.image_dir = None


def train_data(config) -> TrainData:
    from data_pipeline import pipeline

    split = pipeline.load_split(config.data, "train")

    def make_iter(start_step: int):
        return pipeline.make_train_iter(
            config.data, split, global_batch_size=config.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
            seed=config.seed, start_step=start_step,
        )

    return TrainData(make_iter=make_iter, num_examples=split.num_examples, data_counts=split.data_counts)


def eval_splits(config, names) -> dict[str, EvalSplit]:
    """The named evaluation splits of either task, each a padded in-order stream."""
    from data_pipeline import pipeline

    splits = {}
    eval_features = tasks.task_class(config).eval_features
    for name in names:
        split = pipeline.load_split(config.data, name)

        def make_iter(split=split):
            return pipeline.make_eval_iter(
                config.data, split, global_batch_size=config.eval_batch_size,
                process_index=jax.process_index(), process_count=jax.process_count(),
            )

        features = split.features if eval_features else None
        splits[name] = EvalSplit(name=name, make_iter=make_iter, features=features,
                                 num_examples=split.num_examples, source=config.data.get(f"{name}_file"),
                                 data_counts=split.data_counts)
    return splits
