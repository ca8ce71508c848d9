"""Examples/s and memory of R runs in one program against the same runs one after another.

The real steps of a config (default ``configs/demo.py``: tiny BERT, ResNet-50
with blocks (1,1,1,1) and width 8, batch 8, with images) on one device:

* one after another: the single run's jitted step (`Experiment.make_train_step`),
  timed once; R runs in sequence take R times as long, so their examples/s is
  the single run's whatever R is;
* together: the population's step (`jml_jax.population.Population.make_train_step`)
  of R runs (seeds 1..R) mapped over on the one device.

Weights are random (no pretrained file is read). Each program is compiled once, warmed up, then timed over ``--steps`` steps of
synthetic batches of the task's inputs (`jml_jax.contract.synthetic_batch`).
Memory is XLA's plan for the compiled step (``memory_analysis``: arguments +
outputs + temporaries - donated aliases), the same on every run of it.

    python -m tools.benchmark_population [--config configs/demo.py[:text_only]]
        [--runs 1,2,4] [--steps 5] [--warmup 1] [--json FILE] [--override=--config.FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np

from jml_jax import contract
from jml_jax.experiment import build_experiment
from jml_jax.population import build_population
from jml_jax.runs import with_seeds
from jml_jax.sharding import global_batch_from_process_local
from tools.subcommands import load_config


def _planned_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def _time(compiled, state, batch, steps: int, warmup: int) -> tuple[float, Any]:
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - t0, metrics


def bench_single(config, device, steps: int, warmup: int) -> dict:
    exp = build_experiment(config, devices=[device], num_train_steps=1000)
    batch = global_batch_from_process_local(
        contract.synthetic_batch(exp.inputs(train=True), seed=1, vocab_size=int(exp.model.config.bert.vocab_size)),
        exp.mesh)
    state = exp.initial_state()
    t0 = time.perf_counter()
    compiled = exp.make_train_step().lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    elapsed, metrics = _time(compiled, state, batch, steps, warmup)
    rows = steps * int(config.batch_size)
    return {"mode": "alone", "runs": 1, "compile_s": round(compile_s, 1), "step_s": elapsed / steps,
            "examples_per_s": rows / elapsed, "planned_mib": _planned_bytes(compiled) / 2**20,
            "loss": float(np.asarray(metrics["loss"]))}


def bench_population(config, runs: int, device, steps: int, warmup: int) -> dict:
    pop = build_population(with_seeds(config, runs), devices=[device], num_train_steps=1000)
    one = pop.exp.inputs(train=True)
    vocab = int(pop.exp.model.config.bert.vocab_size)
    host = [contract.synthetic_batch(one, seed=1 + r, vocab_size=vocab) for r in range(runs)]
    batch = pop.global_batch({k: np.concatenate([h[k] for h in host]) for k in one})
    state = pop.initial_state()
    t0 = time.perf_counter()
    compiled = pop.make_train_step().lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    elapsed, metrics = _time(compiled, state, batch, steps, warmup)
    rows = steps * int(config.batch_size) * runs
    return {"mode": "together", "runs": runs, "compile_s": round(compile_s, 1), "step_s": elapsed / steps,
            "examples_per_s": rows / elapsed, "planned_mib": _planned_bytes(compiled) / 2**20,
            "loss": [float(x) for x in np.asarray(metrics["loss"])]}


def table(single: dict, together: list[dict]) -> str:
    lines = ["| runs | one after another: examples/s | together: examples/s | together / one after another "
             "| step (s), together | planned memory (MiB): alone / together |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in together:
        lines.append(f"| {r['runs']} | {single['examples_per_s']:.1f} | {r['examples_per_s']:.1f} | "
                     f"{r['examples_per_s'] / single['examples_per_s']:.2f}x | {r['step_s']:.3f} | "
                     f"{single['planned_mib']:.0f} / {r['planned_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.py", help="config file[:variant]")
    p.add_argument("--override", action="append", default=[], metavar="--config.FIELD=VALUE",
                   help="a config override as launch.train takes it, e.g. --override=--config.batch_size=4")
    p.add_argument("--runs", default="1,2,4", help="comma-separated population sizes")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    config = load_config(args.config, args.override)
    with config.unlocked():
        for field in ("bert_init", "resnet_init", "relation_init", "original_checkpoint"):
            config.model[field] = None  # random weights: the speed does not depend on their values
    device = jax.devices()[0]
    print(f"{args.config} on one {device.platform} device ({device.device_kind}); batch {config.batch_size} "
          f"per run; {args.steps} timed steps after {args.warmup}", flush=True)
    single = bench_single(config, device, args.steps, args.warmup)
    print(f"alone: {single['examples_per_s']:.1f} examples/s, compile {single['compile_s']} s", flush=True)
    together = []
    for runs in [int(x) for x in args.runs.split(",")]:
        r = bench_population(config, runs, device, args.steps, args.warmup)
        together.append(r)
        print(f"{runs} together: {r['examples_per_s']:.1f} examples/s, compile {r['compile_s']} s", flush=True)
    print()
    print(table(single, together))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"config": args.config, "overrides": args.override, "device": device.device_kind,
             "steps": args.steps, "alone": single, "together": together}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
