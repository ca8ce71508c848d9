"""What every launch script shares: process setup, config paths, data sources."""

from __future__ import annotations

import logging
import os

import jax

from jml_jax import tasks, weights
from jml_jax.evaluators import EvalSplit
from jml_jax.train import TrainData
from tools.subcommands import load_config  # noqa: F401  (launch's entry points read configs through it)

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


def split_file_field(data_config, split: str) -> str:
    """The data field a split's annotations come from: ``<split>_file``, or
    ``train_file`` for TRC's seeded train/test split (no data.test_file)."""
    if data_config.name == "trc" and data_config.test_file is None and split in ("train", "test"):
        return "train_file"
    if f"{split}_file" not in data_config:
        raise ValueError(f"unknown split {split!r} in config.eval_splits: expected 'train', 'dev' or 'test'")
    return f"{split}_file"


def check_inputs(config, splits=None) -> None:
    """Every config error and missing input a run would hit, before any data
    is read or image decoded (minutes on real data): the data fields, each
    split's annotation file (the error names the field and the split), the
    vocabulary, image folder and fallback, the pretrained weights, and what
    `train_and_evaluate` checks at its start (schedule, mesh, model and
    optimizer settings, select split and metric, batch sizes). ``splits``:
    default train and ``config.eval_splits``."""
    from types import SimpleNamespace

    from data_pipeline.config import validate_data_config
    from jml_jax.evaluators import validate_eval_setup
    from jml_jax.experiment import build_experiment
    from jml_jax.population import build_population
    from jml_jax.runs import runs_spec
    from jml_jax.train import Schedule

    data = config.data
    validate_data_config(data)
    splits = list(dict.fromkeys(splits or ("train", *config.eval_splits)))
    for split in splits:
        field = split_file_field(data, split)
        path = data[field]
        if path is None:
            raise ValueError(f"data.{field} is not set, so split {split!r} cannot be loaded")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data.{field}={path!r} (split {split!r}): no such file")
    if data.vocab_file is None:
        raise ValueError("data.vocab_file is not set")
    weights.resolve_path(data.vocab_file, what="data.vocab_file")
    if data.image_dir is not None and not os.path.isdir(data.image_dir):
        raise FileNotFoundError(f"data.image_dir={data.image_dir!r}: no such folder")
    fallback = data.fallback_image
    if fallback is not None:
        path = fallback if os.path.isabs(fallback) or data.image_dir is None else os.path.join(data.image_dir, fallback)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data.fallback_image={fallback!r}: no such file ({path})")
    for field in ("bert_init", "resnet_init", "relation_init", "original_checkpoint"):
        if config.model.get(field):
            weights.resolve_path(config.model[field], what=f"model.{field}")
    Schedule.from_config(config, int(config.batch_size))  # optimizer.t_total, batch_size
    if runs_spec(config) is not None:  # runs fields, runs axis, per-run optimizer values
        exp = build_population(config, num_train_steps=1, steps_per_epoch=1).exp
    else:
        exp = build_experiment(config, num_train_steps=1, steps_per_epoch=1)
    # The splits are not read yet: their sizes are checked when they are.
    unread = {name: SimpleNamespace(num_examples=1, source=None) for name in config.eval_splits}
    validate_eval_setup(config, exp.task, unread, exp.mesh)


def train_data(config) -> TrainData:
    """This process's share of the training stream of ``config.seed``."""
    from data_pipeline import pipeline

    split = pipeline.load_split(config.data, "train")
    return _stream(config, split, config.seed, jax.process_index(), jax.process_count())


def population_train_data(config) -> list[TrainData]:
    """One whole training stream per run of a population (jml_jax/runs.py), each
    in its own seed's order, over the training set read once."""
    from data_pipeline import pipeline
    from jml_jax.runs import runs_spec

    split = pipeline.load_split(config.data, "train")
    return [_stream(config, split, seed, 0, 1) for seed in runs_spec(config).seeds]


def _stream(config, split, seed: int, process_index: int, process_count: int) -> TrainData:
    from data_pipeline import pipeline

    def make_iter(start_step: int):
        return pipeline.make_train_iter(
            config.data, split, global_batch_size=config.batch_size,
            process_index=process_index, process_count=process_count, seed=seed, start_step=start_step,
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


def predict_split(config, inputs, image_dir=None):
    """``launch.predict``'s inputs (data_pipeline.predict_inputs.PredictInput) as
    ``(inputs with .truncated set, the EvalSplit jml_jax.predict.predict decodes)``."""
    from data_pipeline import pipeline, predict_inputs
    from jml_jax.predict import prediction_split

    inputs, prepared = predict_inputs.prepare_inputs(config, inputs, image_dir)

    def make_iter():
        return pipeline.make_eval_iter(
            config.data, prepared, global_batch_size=config.eval_batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )

    return inputs, prediction_split(prepared.features, make_iter)
