"""Two CPU processes train the JML demo exactly like one process.

Launches tests/helpers/train_worker.py twice on localhost (2 CPU devices each, a
(1, 2, 2) mesh across the 4), each training the text-only demo config with its
own share of every batch. Meanwhile this process runs the same config on the
same mesh shape over 4 of its own devices. Losses per step and final
parameters must match to 1e-5: for 2 train steps (quick), and for a whole
`train_and_evaluate` run with evaluation and checkpoints (slow), whose
optimizer state and scores must match too.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
import pytest

from helpers import localhost_processes
from helpers import train_worker
from jml_jax import train
from jml_jax.experiment import build_experiment
from jml_jax.checkpointing import Checkpointer
from jml_jax.summary import read_jsonl
from launch import common

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


TIMEOUT_S = 420  # both workers together; the test fails, naming the timeout, past it
WORKER = localhost_processes.REPO_ROOT / "tests" / "helpers" / "train_worker.py"
SELECT = "dev/joint_orig/f1"


def _start_workers(mode, workdir):
    return localhost_processes.start_workers(WORKER, lambda i, n, port: [mode, i, n, port, workdir])


def _wait(procs, deadline):
    localhost_processes.wait_for_workers(procs, deadline, timeout_s=TIMEOUT_S, what="the training workers")


def _flat(tree):
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    }


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_jsonl(workdir / "metrics.jsonl") if "train/loss" in r}


def test_two_processes_take_the_same_steps_as_one(tmp_path):
    procs = _start_workers("steps", tmp_path)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        losses, state = train_worker.run_steps(train_worker.worker_config(), train_worker.STEPS,
                                               devices=jax.devices()[:4])
    finally:
        _wait(procs, deadline)
    result = np.load(tmp_path / "result.npz")
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-5, atol=1e-5)
    want = _flat(state.params)
    assert set(want) == set(result.files) - {"losses"}
    for key, value in want.items():
        np.testing.assert_allclose(result[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    (tmp_path / "two").mkdir()
    procs = _start_workers("train", tmp_path / "two")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # The one-process reference, while the workers run.
        config = train_worker.worker_config()
        devices = jax.devices()[:4]
        train_data = common.train_data(config)
        splits = common.eval_splits(config, ("dev", "test"))
        summary = train.train_and_evaluate(config, tmp_path / "one", train_data, splits, devices=devices)
    finally:
        _wait(procs, deadline)
    two = tmp_path / "two"
    reports = [json.loads((two / f"process_{i}.json").read_text()) for i in range(2)]

    # Each process loaded its own half of every global batch.
    it = train_data.make_iter(0)
    global_rows = it.batch_at(0)["example_index"].tolist()
    it.close()
    assert [r["local_devices"] for r in reports] == [2, 2]
    assert reports[0]["rows"] + reports[1]["rows"] == global_rows and len(reports[0]["rows"]) == 4

    # The same losses at every step.
    one_losses, two_losses = _losses(tmp_path / "one"), _losses(two)
    assert sorted(one_losses) == sorted(two_losses) == [1, 2, 3, 4]
    np.testing.assert_allclose([two_losses[s] for s in range(1, 5)], [one_losses[s] for s in range(1, 5)],
                               rtol=1e-5, atol=1e-5)

    # The same final state: both checkpoints restored onto the same target.
    s = build_experiment(config, num_train_steps=4, devices=devices)
    states = {}
    for name in ("one", "two"):
        with Checkpointer(tmp_path / name, create=False) as ckpt:
            assert ckpt.all_steps() == [2, 4]
            states[name], _ = ckpt.restore("latest", s.abstract_state)
    assert int(states["two"].step) == 4
    want, got = _flat(states["one"]), _flat(states["two"])
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)

    # The same evaluation, from the summary every process returned and the one
    # process 0 wrote.
    assert json.loads((two / "summary.json").read_text())["best_scores"] == summary["best_scores"]
    for r in reports:
        assert r["summary"]["best_scores"] == summary["best_scores"]
        assert r["summary"]["best_step"] == summary["best_step"] == 4
