"""One process of the two-process JML training run in tests/test_train_multiprocess.py.

Usage: python train_worker.py MODE PROCESS_ID NUM_PROCESSES PORT WORKDIR

Each process owns 2 CPU devices (XLA_FLAGS set by the launching test); the 4
global devices form a (data=1, fsdp=2, tensor=2) mesh, so the batch and the
FSDP parameter shards span the two processes and the tensor split stays
inside each. Each process loads only its rows of every global batch through
data_pipeline's `make_train_iter` with its process index and count
(`launch.common.train_data`). MODE:

* ``train``: `jml_jax.train.train_and_evaluate` on the text-only demo config,
  exactly as `launch.train` runs it: steps, evaluation, the shared Orbax
  checkpoints; process 0 writes summary.json and metrics.jsonl.
* ``steps``: the same set-up and jitted train step for `STEPS` steps, no
  evaluation (the quick variant); process 0 writes the losses and the
  gathered parameters to WORKDIR/result.npz.
"""

from __future__ import annotations

import json
import os
import sys

MESH_SHAPE = (1, 2, 2)
STEPS = 2


def worker_config():
    """The text-only demo config of the training-system tests, on MESH_SHAPE."""
    from helpers.small_demo import small_demo_config

    c = small_demo_config(images=False)
    c.mesh_shape = MESH_SHAPE
    return c


def run_steps(config, num_steps: int, devices=None):
    """``num_steps`` train steps as `train_and_evaluate` takes them: (losses, state)."""
    from jml_jax.experiment import build_experiment
    from jml_jax.sharding import global_batch_from_process_local
    from launch import common

    s = build_experiment(config, num_train_steps=config.max_steps, devices=devices)
    step = s.make_train_step()
    it = common.train_data(config).make_iter(0)
    state, losses = s.initial_state(), []
    try:
        for _ in range(num_steps):
            batch = next(it)
            batch = {k: batch[k] for k in s.task.batch_keys if k in batch}
            state, metrics = step(state, global_batch_from_process_local(batch, s.mesh))
            losses.append(float(metrics["loss"]))
    finally:
        it.close()
    return losses, state


def main(mode: str, process_id: int, num_processes: int, port: int, workdir: str) -> None:
    import jax

    from helpers import localhost_processes

    localhost_processes.initialize(process_id, num_processes, port)
    from jml_jax.train import train_and_evaluate
    from launch import common

    config = worker_config()
    if mode == "steps":
        import numpy as np
        from jax.experimental import multihost_utils

        losses, state = run_steps(config, STEPS)
        params = multihost_utils.process_allgather(state.params, tiled=True)
        if process_id == 0:
            flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
            np.savez(os.path.join(workdir, "result.npz"), losses=np.asarray(losses), **flat)
        jax.distributed.shutdown()
        return
    train_data = common.train_data(config)
    # The rows this process loads of global batch 0 (checked by the test).
    it = train_data.make_iter(0)
    rows = it.batch_at(0)["example_index"].tolist()
    it.close()
    summary = train_and_evaluate(config, workdir, train_data, common.eval_splits(config, ("dev", "test")))
    with open(os.path.join(workdir, f"process_{process_id}.json"), "w") as f:
        json.dump({"rows": rows, "summary": summary, "local_devices": jax.local_device_count()}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
