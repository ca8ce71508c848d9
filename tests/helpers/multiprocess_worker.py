"""One process of the two-process CPU training run in tests/test_multiprocess.py.

Usage: python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUTDIR

Each process owns 2 CPU devices (XLA_FLAGS set by the launching test); the
4 global devices form a data=2 x fsdp=2 mesh, so both the batch and the FSDP
parameter shards span the two processes. Each process loads only its rows of
every global batch. After 3 steps, process 0 writes the losses and the
gathered parameters to OUTDIR/result.npz, and all processes write an Orbax
checkpoint to OUTDIR/run.
"""

import os
import sys

import jax

from helpers import localhost_processes


def main(process_id: int, num_processes: int, port: int, outdir: str) -> None:
    localhost_processes.initialize(process_id, num_processes, port)
    import numpy as np
    from jax.experimental import multihost_utils

    from helpers import toy_model
    from jml_jax.checkpointing import Checkpointer
    from jml_jax.mesh import make_mesh
    from jml_jax.sharding import batch_sharding, global_batch_from_process_local, process_batch_rows
    from jml_jax.steps import make_train_step
    from jml_jax.train_state import create_sharded_state

    mesh = make_mesh((2, 2, 1))
    model = toy_model.ToyMLP()
    tx = toy_model.make_tx()
    state, shardings = create_sharded_state(
        toy_model.init_fn(model), tx, mesh, None, jax.random.PRNGKey(3)
    )
    step = make_train_step(toy_model.loss_fn(model), tx, shardings, batch_sharding(mesh))
    batch_size = 16
    rows = process_batch_rows(mesh, batch_size)
    losses = []
    for batch in toy_model.make_batches(3, batch_size):
        local = {k: v[rows] for k, v in batch.items()}
        state, metrics = step(state, global_batch_from_process_local(local, mesh))
        losses.append(float(metrics["loss"]))

    params = multihost_utils.process_allgather(state.params, tiled=True)
    stats = multihost_utils.process_allgather(state.batch_stats, tiled=True)
    if process_id == 0:
        flat = {}
        for prefix, tree in (("params", params), ("batch_stats", stats)):
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
                flat[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
        np.savez(
            os.path.join(outdir, "result.npz"),
            losses=np.asarray(losses),
            rows_start=rows.start,
            **flat,
        )
    with Checkpointer(os.path.join(outdir, "run"), async_save=True) as ckpt:
        ckpt.save(3, state, {"processes": num_processes}, metrics={"dev/joint_orig/f1": 0.5})
        ckpt.wait()
    with open(os.path.join(outdir, f"rows_{process_id}.txt"), "w") as f:
        f.write(f"{rows.start} {rows.stop}\n")
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
