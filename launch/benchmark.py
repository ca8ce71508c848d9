"""Throughput benchmarks.

    # Flax BERT train step vs transformers' PyTorch BertModel, same shapes:
    python -m launch.benchmark encoders --config bert-base --batch 32 --length 96 \
        --dtype bfloat16 --steps 50 --warmup 5 --json bench.json
    # CPU-sized run:
    python -m launch.benchmark encoders --config minilm-l6 --batch 8 --length 96 --steps 5 --warmup 2

A train step is forward + backward + Adam update with dropout on; the loss is
the mean of the last hidden states plus the mean of the pooled output. JAX uses
its default backend (GPU/TPU when present); torch uses CUDA when available.
bfloat16: ``BertModel(dtype=jnp.bfloat16)`` vs ``torch.autocast(bfloat16)``,
parameters float32 on both sides. Compile time (JAX) and the first eager step
(torch) are reported apart from steady-state steps/s. Each framework runs in
its own fresh process.

Each benchmark is one subcommand: an entry of SUBCOMMANDS mapping its name to
(add_arguments, run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import numpy as np


def _batch(vocab_size: int, batch: int, length: int, seed: int = 0):
    """Random ids [B, L] with per-row padding (lengths from L/2 to L)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, vocab_size, (batch, length)).astype(np.int32) * mask
    return ids, mask


def bench_flax_bert(cfg, ids, mask, dtype: str, steps: int, warmup: int) -> dict[str, Any]:
    """Jitted Flax BERT train step; returns compile time and steps/s."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax.linen import meta

    from jml_jax.models.bert import BertModel

    model = BertModel(cfg, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    params = jax.jit(lambda: meta.unbox(model.init(jax.random.key(0), ids, mask))["params"])()
    tx = optax.adam(1e-5)
    opt_state = jax.jit(tx.init)(params)

    def loss_fn(p, key):
        hidden, pooled = model.apply(
            {"params": p}, ids, mask, deterministic=False, rngs={"dropout": key}
        )
        return jnp.mean(hidden.astype(jnp.float32)) + jnp.mean(pooled.astype(jnp.float32))

    def train_step(p, o, step):
        key = jax.random.fold_in(jax.random.key(1), step)
        loss, grads = jax.value_and_grad(loss_fn)(p, key)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    t0 = time.perf_counter()
    step_fn = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, 0).compile()
    compile_s = time.perf_counter() - t0
    for i in range(warmup):
        params, opt_state, loss = step_fn(params, opt_state, i)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step_fn(params, opt_state, warmup + i)
    jax.block_until_ready(loss)
    elapsed = time.perf_counter() - t0
    return {
        "framework": "flax (jit)",
        "device": str(jax.devices()[0].platform),
        "compile_s": compile_s,
        "steps_per_s": steps / elapsed,
        "final_loss": float(loss),
    }


def bench_torch_bert(cfg, ids, mask, dtype: str, steps: int, warmup: int) -> dict[str, Any]:
    """Eager transformers BertModel train step; returns first-step time and steps/s."""
    import contextlib

    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(hf_cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    ids_t = torch.from_numpy(ids).long().to(device)
    mask_t = torch.from_numpy(mask).long().to(device)

    def autocast():
        if dtype == "bfloat16":
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(input_ids=ids_t, attention_mask=mask_t)
            loss = out.last_hidden_state.float().mean() + out.pooler_output.float().mean()
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    step()
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - t0
    return {
        "framework": "torch (eager)",
        "device": device,
        "compile_s": first_s,
        "steps_per_s": steps / elapsed,
        "final_loss": float(loss.detach()),
    }


def _in_fresh_process(fn: Callable[..., dict], *args) -> dict:
    """Runs ``fn(*args)`` in a spawned process.

    One framework per process: on GPU, JAX preallocates most of the memory and
    would starve torch; on CPU, torch's threads slow down some 50x once XLA's
    CPU runtime has run in the same process.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------- encoders

def _encoders_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="minilm-l6", help="BERT preset: bert-base | minilm-l6 | tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=96)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true", help="only the Flax model")
    p.add_argument("--json", default=None, help="also write the results to this file")


def _encoders_run(args: argparse.Namespace) -> int:
    from jml_jax.models.bert import get_bert_config

    cfg = get_bert_config(args.config)
    ids, mask = _batch(cfg.vocab_size, args.batch, args.length)
    bench_args = (cfg, ids, mask, args.dtype, args.steps, args.warmup)
    results = [_in_fresh_process(bench_flax_bert, *bench_args)]
    if not args.skip_torch:
        results.append(_in_fresh_process(bench_torch_bert, *bench_args))
    shape = f"{args.config} batch {args.batch} x length {args.length}, {args.dtype}"
    print(f"BERT train step (fwd+bwd+adam), {shape}, {args.steps} timed steps")
    print(f"{'framework':<15} {'device':<7} {'compile/1st step s':>18} {'steps/s':>9} "
          f"{'tokens/s':>10}")
    for r in results:
        tokens = r["steps_per_s"] * args.batch * args.length
        print(f"{r['framework']:<15} {r['device']:<7} {r['compile_s']:>18.2f} "
              f"{r['steps_per_s']:>9.3f} {tokens:>10.0f}")
    summary: dict[str, Any] = {"benchmark": "encoders",
                               "args": {k: v for k, v in vars(args).items() if k != "run"},
                               "results": results}
    if len(results) == 2:
        ratio = results[0]["steps_per_s"] / results[1]["steps_per_s"]
        summary["flax_over_torch"] = ratio
        print(f"flax / torch steps/s ratio: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return 0


# Subcommands: name -> (add_arguments, run). Other benchmarks are added here.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], int]]] = {
    "encoders": (_encoders_args, _encoders_run),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name)
        add_arguments(p)
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
