"""Steps/s of the faithful accumulated train step: sequential scan vs one pass.

The paper's effective batch (8 mini-batches of 4 sentences, L=96, 224x224
images, §5.4) with the tiny widths of configs/demo.py (tiny BERT with a
128-position table so that L=96 fits, ResNet-50 with blocks (1,1,1,1) and
width 8), dropout on, Adam. Both modes run the same arithmetic
(tests/test_one_pass.py); only the schedule differs: "scan" runs 8
micro-batches of 4 in a ``lax.scan``, "one_pass" one forward/backward over
[8 groups x 4].

    python -m tools.benchmark_accumulation [--steps 10] [--warmup 2] [--groups 8 --micro 4]

Prints one line per mode (compile seconds, steps/s, examples/s) and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax
import optax

from jml_jax import contract
from jml_jax.mesh import make_mesh
from jml_jax.model_factory import make_init_fn
from jml_jax.models.bert import BERT_PRESETS
from jml_jax.models.jml import JMLConfig, JMLModel
from jml_jax.sharding import batch_sharding, global_batch_from_process_local
from jml_jax.steps import ACCUMULATIONS, make_train_step
from jml_jax.tasks import joint_loss
from jml_jax.train_state import create_sharded_state

SPANS = 20  # the original's max aspect slots (§5.2)


def bench(accumulation: str, args) -> dict:
    bert = dataclasses.replace(BERT_PRESETS["tiny"], max_position_embeddings=max(128, args.length))
    model = JMLModel(JMLConfig(bert=bert, resnet_depth=50, resnet_blocks=(1, 1, 1, 1), resnet_width=8))
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tx = optax.adam(1e-5)
    # The joint task's contract (jml_jax/contract.py) gives the init and the batch their shapes.
    def inputs(size):
        return contract.joint_inputs(size, length=args.length, spans=SPANS, train=True, image_size=args.image)

    state, shardings = create_sharded_state(make_init_fn(model, inputs(1)), tx, mesh, None, jax.random.PRNGKey(0))
    loss_fn = functools.partial(joint_loss, model, model.config)
    step = make_train_step(loss_fn, tx, shardings, batch_sharding(mesh),
                           grad_accum_steps=args.groups, accumulation=accumulation)
    batch = global_batch_from_process_local(contract.synthetic_batch(inputs(args.groups * args.micro), aspects=3), mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - t0
    return {"accumulation": accumulation, "compile_s": round(compile_s, 2),
            "steps_per_s": args.steps / elapsed,
            "examples_per_s": args.steps * args.groups * args.micro / elapsed,
            "loss": float(metrics["loss"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", type=int, default=8, help="grad_accum_steps (mini-batches per step)")
    p.add_argument("--micro", type=int, default=4, help="sentences per mini-batch")
    p.add_argument("--length", type=int, default=96)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--modes", default=",".join(reversed(ACCUMULATIONS)),
                   help="comma-separated accumulation modes to time")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    print(f"device {jax.devices()[0].device_kind}, batch {args.groups * args.micro} = "
          f"{args.groups} x {args.micro}, L={args.length}, images {args.image}, "
          f"{args.steps} timed steps after {args.warmup}")
    results = []
    for mode in args.modes.split(","):
        r = bench(mode, args)
        results.append(r)
        print(f"{mode:>9}: compile {r['compile_s']:6.1f} s, {r['steps_per_s']:7.3f} steps/s, "
              f"{r['examples_per_s']:7.1f} examples/s, loss {r['loss']:.4f}")
    by_mode = {r["accumulation"]: r for r in results}
    if {"scan", "one_pass"} <= set(by_mode):
        ratio = by_mode["one_pass"]["steps_per_s"] / by_mode["scan"]["steps_per_s"]
        print(f"one_pass / scan steps/s: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
