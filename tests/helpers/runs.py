"""Whole training runs of the shrunk demo config, shared by the run tests
(test_train_system.py, test_cluster_runs.py, test_launch_inputs.py).

Import the fixtures into a test module to use them there (pytest finds
fixtures in a module's namespace); each module then compiles its programs once,
into its own persistent compilation cache (``compilation_cache_dir``, autouse).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from helpers import small_demo
from jml_jax import train
from jml_jax.checkpointing import Checkpointer
from jml_jax.experiment import build_experiment
from launch import common

TOTAL_STEPS = small_demo.TOTAL_STEPS
_CACHE_OPTIONS = {
    "jax_compilation_cache_dir": None,
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,
}


def with_changes(config, **changes):
    """A copy of ``config`` with dotted fields set: ``with_changes(c, **{"data.dev_file": p})``."""
    c = config.copy_and_resolve_references()
    for dotted, value in changes.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def small_demo_config(*, images: bool):
    """The shrunk demo config keeping 3 checkpoints (the damage tests fall back to older ones)."""
    return with_changes(small_demo.small_demo_config(images=images), keep_checkpoints=3)


def flat(tree) -> dict[str, np.ndarray]:
    """``{key path: host array}`` of a pytree."""
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    }


def restore(config, workdir, which="latest", devices=None):
    """``(state, metadata)`` of a run's checkpoint ``which``."""
    s = build_experiment(config, num_train_steps=TOTAL_STEPS, devices=devices)
    with Checkpointer(workdir, create=False) as ckpt:
        return ckpt.restore(which, s.abstract_state)


def never(start):
    """A ``TrainData.make_iter`` for runs that must not start training."""
    raise AssertionError("training must not start")


def acting_at(data: train.TrainData, at_step: int, act: Callable[[], None]) -> train.TrainData:
    """The same stream; ``act()`` is called when step ``at_step`` asks for its
    batch (raise to stand for a lost host, or signal the process)."""

    def make_iter(start):
        inner = data.make_iter(start)

        def gen():
            step = start
            try:
                while True:
                    step += 1
                    if step == at_step:
                        act()
                    yield next(inner)
            finally:
                inner.close()

        return gen()

    return train.TrainData(make_iter=make_iter, num_examples=data.num_examples, data_counts=data.data_counts)


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_dir(tmp_path_factory):
    """JAX's persistent compilation cache, for the importing module only."""
    saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    options = dict(_CACHE_OPTIONS, jax_compilation_cache_dir=str(tmp_path_factory.mktemp("jax_cache")))
    for name, value in options.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # picks up the folder even if JAX compiled before
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def text_config():
    return small_demo_config(images=False)


@pytest.fixture(scope="module")
def text_data(text_config):
    return common.train_data(text_config), common.eval_splits(text_config, ("dev", "test"))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_config, text_data):
    """An uninterrupted 4-step text-only run on the default (8, 1, 1) mesh."""
    workdir = tmp_path_factory.mktemp("text_run")
    summary = train.train_and_evaluate(text_config, workdir, *text_data)
    return workdir, summary
