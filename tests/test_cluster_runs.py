"""Runs under a cluster's scheduler (jml_jax.train with the shrunk demo config):
SIGTERM saves the current step and the rerun ends bit-identical to an
uninterrupted run; train_seconds sums every process; damaged checkpoints are
resumed past or, when all are damaged, never silently restarted.

The uninterrupted run and the compilation cache come from
tests/helpers/runs.py (the same programs as test_train_system.py, compiled once per module).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import types

import jax
import numpy as np
import pytest

from helpers.runs import (  # noqa: F401 (fixtures)

    TOTAL_STEPS,
    acting_at,
    compilation_cache_dir,
    flat,
    never,
    restore,
    text_config,
    text_data,
    text_run,
)
from jml_jax import train
from jml_jax.checkpointing import CheckpointError, Checkpointer
from jml_jax.preemption import PREEMPTED_EXIT_CODE, Preempted
from jml_jax.summary import read_jsonl

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


def _signalled(data: train.TrainData, at_step: int, signum=signal.SIGTERM) -> train.TrainData:
    """The same stream; this process gets ``signum`` when step ``at_step`` asks for its batch."""
    return acting_at(data, at_step, lambda: os.kill(os.getpid(), signum))


def _clock(step_seconds: float):
    """A stand-in for jml_jax.train's ``time`` module: each call is ``step_seconds`` later."""
    calls = iter(range(10**6))
    return types.SimpleNamespace(time=lambda: next(calls) * step_seconds)


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_jsonl(workdir / "metrics.jsonl") if "train/loss" in r}


def _assert_identical(a, b, what):
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


def test_sigterm_saves_the_current_step_and_the_rerun_ends_bit_identical(
        tmp_path, text_config, text_data, text_run, monkeypatch, caplog):
    signum = signal.SIGTERM  # SIGINT takes the same way (tests/test_preemption.py)
    full_dir, full_summary = text_run
    train_data, splits = text_data
    workdir = tmp_path / "run"
    assert text_config.checkpoint_every_steps == 2  # without the signal, only step 2 would be kept
    previous = signal.getsignal(signum)
    with monkeypatch.context() as m:
        m.setattr(train, "time", _clock(250.0))  # each save is 250 "seconds" after the last
        with pytest.raises(Preempted) as stop, caplog.at_level("WARNING", logger="jml_jax"):
            train.train_and_evaluate(text_config, workdir, _signalled(train_data, 3, signum), splits)
    assert stop.value.step == 3 and stop.value.exit_code == PREEMPTED_EXIT_CODE == 75
    assert f"{signal.Signals(signum).name}: saved step 3 of {TOTAL_STEPS}" in caplog.text
    assert signal.getsignal(signum) is previous  # the handlers are put back
    assert not (workdir / "lock.json").exists() and not (workdir / "summary.json").exists()
    assert json.loads((workdir / "preempted.json").read_text())["step"] == 3  # for scheduler scripts
    with Checkpointer(workdir, create=False) as ckpt:
        assert ckpt.all_steps() == [2, 3]  # step 3, the one in flight, was saved: no step lost
    assert sorted(_losses(workdir)) == [1, 2, 3]
    _, meta = restore(text_config, workdir, which=3)
    assert meta["train_seconds"] == 500.0  # t0, step 2's save, step 3's save

    summary = train.train_and_evaluate(text_config, workdir, train_data, splits)
    assert not (workdir / "preempted.json").exists()
    full, _ = restore(text_config, full_dir)
    resumed, _ = restore(text_config, workdir)
    assert int(resumed.step) == TOTAL_STEPS
    _assert_identical(resumed, full, "resumed against uninterrupted")
    assert _losses(workdir) == _losses(full_dir)
    assert summary["best_scores"] == full_summary["best_scores"]
    # The time of both processes: the first one's 500 s and the rerun's own.
    assert 500.0 <= summary["train_seconds"] < 500.0 + full_summary["train_seconds"] + 120


def test_a_deleted_metadata_file_resumes_from_the_previous_step(tmp_path, text_config, text_data, text_run):
    full_dir, full_summary = text_run
    workdir = tmp_path / "run"
    shutil.copytree(full_dir, workdir)
    (workdir / "checkpoints" / str(TOTAL_STEPS) / "state" / "_METADATA").unlink()
    summary = train.train_and_evaluate(text_config, workdir, *text_data)
    assert (workdir / "damaged_checkpoints" / str(TOTAL_STEPS)).is_dir()
    resumed, _ = restore(text_config, workdir)
    full, _ = restore(text_config, full_dir)
    _assert_identical(resumed.params, full.params, "params after the fallback")
    assert summary["best_scores"] == full_summary["best_scores"]


def test_a_run_whose_checkpoints_are_all_damaged_never_restarts_without_the_flag(
        tmp_path, text_config, text_data, text_run):
    workdir = tmp_path / "run"
    shutil.copytree(text_run[0], workdir)
    for step_dir in (workdir / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            (step_dir / "state" / "_METADATA").unlink()
    no_training = train.TrainData(make_iter=never, num_examples=60)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        train.train_and_evaluate(text_config, workdir, no_training, text_data[1])
    for _ in range(2):  # every later rerun too
        with pytest.raises(CheckpointError, match="set aside as damaged"):
            train.train_and_evaluate(text_config, workdir, no_training, text_data[1])
    assert (workdir / "best").is_dir() and not (workdir / "lock.json").exists()
    summary = train.train_and_evaluate(text_config, workdir, *text_data, allow_fresh_start=True)
    assert summary["final_step"] == TOTAL_STEPS
    assert (workdir / "abandoned_run" / "best").is_dir()
    assert summary["best_scores"] == text_run[1]["best_scores"]
