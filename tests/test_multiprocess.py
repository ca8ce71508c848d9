"""Two CPU processes with jax.distributed train exactly like one process.

Launches tests/helpers/multiprocess_worker.py twice on localhost (2 CPU devices each,
a data=2 x fsdp=2 mesh across them), then repeats the same 3 steps on one device
here and compares the losses and parameters; also restores the checkpoint the
two processes wrote onto this process's single device.
"""

import time

import jax
import numpy as np
import pytest

from helpers import localhost_processes
from helpers import toy_model
from jml_jax.checkpointing import Checkpointer
from jml_jax.mesh import make_mesh
from jml_jax.sharding import batch_sharding, global_batch_from_process_local
from jml_jax.steps import make_train_step
from jml_jax.train_state import abstract_sharded_state, create_sharded_state

# The second test tier: whole runs and many compiles (tests/README.md).
pytestmark = pytest.mark.long


TIMEOUT_S = 120  # the workers together; the test fails, naming the timeout, past it
WORKER = localhost_processes.REPO_ROOT / "tests" / "helpers" / "multiprocess_worker.py"


def _launch(outdir, num_processes=2):
    procs = localhost_processes.start_workers(WORKER, lambda i, n, port: [i, n, port, outdir], num_processes)
    localhost_processes.wait_for_workers(procs, time.monotonic() + TIMEOUT_S, timeout_s=TIMEOUT_S,
                                         what="multi-process workers", tail=4000)


def test_two_processes_match_one(tmp_path):
    _launch(tmp_path)
    result = np.load(tmp_path / "result.npz")
    rows = [tuple(map(int, (tmp_path / f"rows_{i}.txt").read_text().split())) for i in range(2)]
    assert sorted(rows) == [(0, 8), (8, 16)]  # each process loaded half of every batch

    # The same three global batches on one device.
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = toy_model.ToyMLP()
    tx = toy_model.make_tx()
    state, shardings = create_sharded_state(toy_model.init_fn(model), tx, mesh, None, jax.random.PRNGKey(3))
    step = make_train_step(toy_model.loss_fn(model), tx, shardings, batch_sharding(mesh))
    losses = []
    for batch in toy_model.make_batches(3, 16):
        state, metrics = step(state, global_batch_from_process_local(batch, mesh))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-5, atol=1e-5)
    expected = {}
    for prefix, tree in (("params", state.params), ("batch_stats", state.batch_stats)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            expected[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
    assert set(expected) <= set(result.files)
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value, rtol=1e-5, atol=1e-5, err_msg=key)

    # The checkpoint the two processes wrote restores onto one device.
    target, _ = abstract_sharded_state(toy_model.init_fn(model), tx, mesh, None)
    with Checkpointer(tmp_path / "run", create=False) as ckpt:
        restored, meta = ckpt.restore("latest", target)
    assert meta["processes"] == 2 and int(restored.step) == 3
    np.testing.assert_allclose(
        np.asarray(restored.params["up"]["kernel"]), result["params['up']['kernel']"], rtol=0, atol=0
    )
