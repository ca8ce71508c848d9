"""Throughput benchmarks: the full JML model, its encoders, host decoding and the data pipeline.

Full JML model, train step (both BERTs, both ResNets, main ResNet fine-tuned,
relation module frozen: configs/twitter2015.py with random weights) and eval
step (extraction + classification), JAX vs eager PyTorch, same shapes:

    # GPU, the paper's model and step (bert-base, ResNet-152, length 96, the
    # config's batch 32 in 8 accumulation groups of 4, 20 steps), with the
    # torch.compile column:
    python -m launch.benchmark model --preset paper --dtype bfloat16 --torch-compile --json model.json
    # the same, spelled out:
    python -m launch.benchmark model --bert bert-base --resnet-depth 152 --resnet-blocks '' \
        --resnet-width 64 --batch 32 --grad-accum 8 --length 96 --dtype bfloat16 --steps 20 --warmup 3
    # float32 rows: TF32 tensor cores on both sides (the default), or full FP32:
    python -m launch.benchmark model --preset paper --matmul-precision highest
    # CPU-sized run, the default (--preset cpu: tiny BERT, ResNet-50 with one block
    # per stage and width 16, batch 8, length 48; a few minutes on 2 cores):
    python -m launch.benchmark model

Host decoding (sentences/s on one core) and the training iterator (examples/s
at batch 32, images from the TFDS-prepared bundled sample):

    python -m launch.benchmark decode
    python -m launch.benchmark data --prepared-dir /tmp/jml_prepared
    python -m launch.benchmark all          # CPU-feasible ones, Markdown table

BERT alone (`encoders`):

    # Flax BERT train step vs transformers' PyTorch BertModel, same shapes:
    python -m launch.benchmark encoders --config bert-base --batch 32 --length 96 \
        --dtype bfloat16 --steps 50 --warmup 5 --json bench.json
    # CPU-sized run:
    python -m launch.benchmark encoders --config minilm-l6 --batch 8 --length 96 --steps 5 --warmup 2

An encoders train step is forward + backward + Adam update with dropout on;
the loss is the mean of the last hidden states plus the mean of the pooled
output. The model train step is the trainer's own (jml_jax.steps.make_train_step
with the JML loss, BERTAdam) against tools/torch_jml.py (AdamW, clipping). JAX uses
its default backend (GPU/TPU when present); torch uses CUDA when available.
bfloat16: ``BertModel(dtype=jnp.bfloat16)`` vs ``torch.autocast(bfloat16)``,
parameters float32 on both sides. Compile time (JAX) and the first eager step
(torch) are reported apart from steady-state steps/s. Each framework runs in
its own fresh process. --matmul-precision (tf32 | highest) is set explicitly on
both sides (jax_default_matmul_precision; torch allow_tf32 for matmul and
cuDNN) and recorded. MFU: the compiled JAX step's FLOPs (XLA cost_analysis(),
the same model on every side) times steps/s, over a large matmul timed on the
device in the run's compute kind (the measured ceiling) and over the
datasheet's dense peak (tools/benchmark_model.DATASHEET_PEAKS; not reported
for devices outside that table, such as CPUs). Peak memory: the device's peak_bytes_in_use on GPU/TPU
(torch.cuda.max_memory_allocated for torch), the process's max RSS on CPU.

Each benchmark is one subcommand: an entry of SUBCOMMANDS mapping its name to
(add_arguments, run). The measured code sits beside this file:
tools/benchmark_model.py (model steps) and tools/benchmark_host.py (decoding,
the training iterator); tools/benchmark_accumulation.py and
tools/benchmark_eval.py are scripts of their own (``python -m tools.<name>``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from typing import Any, Callable

import numpy as np

from tools.subcommands import run_subcommands


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


# ---------------------------------------------------------------------------- model

# Sizes of the model benchmark: 'paper' is the paper's model and batch (for a
# GPU/TPU), 'cpu' a small stand-in that finishes in minutes on two cores.
# batch and grad_accum None in 'paper' = the real config's (configs/twitter2015.py:
# batch_size 32 in 8 micro-batches), so the step timed is the step training runs.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(bert="bert-base", resnet_depth=152, resnet_blocks="", resnet_width=64,
                  batch=None, grad_accum=None, length=96, steps=20, warmup=3),
    "cpu": dict(bert="tiny", resnet_depth=50, resnet_blocks="1,1,1,1", resnet_width=16,
                batch=8, grad_accum=1, length=48, steps=3, warmup=1),
}


def _paper_config_sizes() -> dict[str, int]:
    """The real config's global batch and accumulation (configs/twitter2015.py)."""
    from configs import twitter2015

    c = twitter2015.get_config()
    return {"batch": int(c.batch_size), "grad_accum": int(c.optimizer.grad_accum_steps)}


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(MODEL_PRESETS), default="cpu",
                   help="default sizes (explicit flags below override them): "
                        + "; ".join(f"{k}: {v}" for k, v in MODEL_PRESETS.items()))
    p.add_argument("--bert", default=None, help="BERT preset: bert-base | minilm-l6 | tiny")
    p.add_argument("--resnet-depth", type=int, default=None, help="152 (the paper) | 101 | 50 | 34 | 18")
    p.add_argument("--resnet-blocks", default=None,
                   help="per-stage block counts, e.g. 1,1,1,1; '' = the depth's own")
    p.add_argument("--resnet-width", type=int, default=None, help="stem width (64 = torchvision)")
    p.add_argument("--batch", type=int, default=None, help="global batch per optimizer step")
    p.add_argument("--length", type=int, default=None, help="sequence length L")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--steps", type=int, default=None, help="timed steps")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after compilation")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per optimizer step (paper preset: the config's, 8)")
    p.add_argument("--matmul-precision", choices=("tf32", "highest"), default="tf32",
                   help="float32 matmuls, set explicitly on both sides: TF32 tensor cores or full FP32")
    p.add_argument("--torch-compile", action="store_true",
                   help="also time torch.compile(model) of the PyTorch twin (its compile time apart)")
    p.add_argument("--text-only", action="store_true", help="no images: no ResNets, no relation module")
    p.add_argument("--skip-torch", action="store_true", help="only the JAX model")
    p.add_argument("--jax-result", default=None,
                   help="reuse the JAX result of an earlier --json file of the same spec instead of "
                        "running JAX again (its FLOPs and matmul ceiling give the PyTorch rows' MFU)")
    p.add_argument("--json", default=None, help="also write the results to this file")


def _model_spec(args: argparse.Namespace):
    from tools.benchmark_model import ModelSpec

    sizes = {k: (getattr(args, k) if getattr(args, k) is not None else v)
             for k, v in MODEL_PRESETS[args.preset].items()}
    if any(v is None for v in sizes.values()):
        real = _paper_config_sizes()
        sizes = {k: (real[k] if v is None else v) for k, v in sizes.items()}
    blocks = tuple(int(b) for b in sizes.pop("resnet_blocks").split(",") if b.strip())
    return ModelSpec(**sizes, resnet_blocks=blocks or None, text_only=args.text_only,
                     dtype=args.dtype, matmul_precision=args.matmul_precision,
                     torch_compile=args.torch_compile)


def model_benchmark(spec, skip_torch: bool = False, jax_result: dict | None = None) -> dict[str, Any]:
    """Runs the JAX (and torch) model benchmarks, each in a fresh process.

    Returns ``{'benchmark': 'model', 'spec': {...}, 'results': [flax, torch?,
    torch compile?], 'flax_over_torch': {'train': r, 'eval': r}, 'mfu':
    {...}}``; each result holds framework, device, init_s, num_params,
    matmul_precision, memory (how peaks were measured) and per phase ('train',
    'eval'): compile_s (JAX compile / first torch step, compile included for
    torch.compile), steps_per_s, examples_per_s, peak_bytes, and mfu_ceiling /
    mfu_datasheet: the phase's FLOPs (XLA's cost_analysis() of the compiled
    JAX step, used for every framework since the model is the same) times
    steps/s, over the measured matmul ceiling and over the datasheet peak
    (None where the device is not in the table, e.g. CPU).
    """
    import dataclasses

    from tools import benchmark_model

    results = [jax_result or _in_fresh_process(benchmark_model.bench_flax_model, spec)]
    if not skip_torch:
        if not (spec.torch_compile and jax_result is not None):  # eager already beside that JAX result
            results.append(_in_fresh_process(benchmark_model.bench_torch_model,
                                             dataclasses.replace(spec, torch_compile=False)))
        if spec.torch_compile:
            results.append(_in_fresh_process(benchmark_model.bench_torch_model, spec))
    summary: dict[str, Any] = {"benchmark": "model", "spec": dataclasses.asdict(spec), "results": results}
    if len(results) >= 2:
        summary["flax_over_torch"] = {
            phase: results[0][phase]["steps_per_s"] / results[1][phase]["steps_per_s"]
            for phase in ("train", "eval")
        }
    flax = results[0]
    ceiling = flax["matmul_ceiling"]["tflops"]
    peak = flax["datasheet_peak_tflops"]
    summary["mfu"] = {"compute_kind": flax["compute_kind"], "matmul_ceiling": flax["matmul_ceiling"],
                      "datasheet_peak_tflops": peak,
                      "flops_per_step": {ph: flax[ph]["flops_per_step"] for ph in ("train", "eval")}}
    for r in results:
        for phase in ("train", "eval"):
            flops = flax[phase]["flops_per_step"]
            r[phase]["mfu_ceiling"] = benchmark_model.mfu(flops, r[phase]["steps_per_s"], ceiling)
            r[phase]["mfu_datasheet"] = benchmark_model.mfu(flops, r[phase]["steps_per_s"], peak)
    return summary


def _describe_spec(spec) -> str:
    images = "text-only" if spec.text_only else (
        f"ResNet-{spec.resnet_depth}" + (f" blocks {spec.resnet_blocks}" if spec.resnet_blocks else "")
        + (f" width {spec.resnet_width}" if spec.resnet_width != 64 else ""))
    return (f"JML {spec.bert} + {images}, batch {spec.batch} x length {spec.length}, {spec.dtype}, "
            f"matmul precision {spec.matmul_precision}, grad accum {spec.grad_accum}, "
            f"{spec.steps} timed steps")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _model_run(args: argparse.Namespace) -> int:
    spec = _model_spec(args)
    jax_result = None
    if args.jax_result:
        with open(args.jax_result) as f:
            earlier = json.load(f)
        if {k: v for k, v in earlier["spec"].items() if k != "torch_compile"} != {
                k: v for k, v in json.loads(json.dumps(dataclasses.asdict(spec))).items() if k != "torch_compile"}:
            raise SystemExit(f"--jax-result {args.jax_result} was measured with another spec: {earlier['spec']}")
        jax_result = earlier["results"][0]
    summary = model_benchmark(spec, skip_torch=args.skip_torch, jax_result=jax_result)
    print(_describe_spec(spec))
    print(f"{'framework':<15} {'device':<7} {'phase':<6} {'compile/1st s':>13} {'steps/s':>9} "
          f"{'examples/s':>10} {'peak MiB':>9} {'MFU ceil':>8} {'MFU sheet':>9}")
    for r in summary["results"]:
        for phase in ("train", "eval"):
            p = r[phase]
            print(f"{r['framework']:<15} {r['device']:<7} {phase:<6} {p['compile_s']:>13.2f} "
                  f"{p['steps_per_s']:>9.3f} {p['examples_per_s']:>10.1f} {p['peak_bytes'] / 2**20:>9.0f} "
                  f"{_pct(p['mfu_ceiling']):>8} {_pct(p['mfu_datasheet']):>9}")
    m = summary["mfu"]
    flops = ", ".join(f"{ph} {v / 1e9:.3f} GFLOP" if v else f"{ph} n/a" for ph, v in m["flops_per_step"].items())
    peak = m["datasheet_peak_tflops"]
    print(f"FLOPs per step (XLA cost_analysis): {flops}; {m['compute_kind']} matmul ceiling "
          f"{m['matmul_ceiling']['tflops']:.2f} TFLOP/s (n={m['matmul_ceiling']['n']}); datasheet peak "
          + (f"{peak:.0f} TFLOP/s ({summary['results'][0]['device_kind']})" if peak else "unknown for this device"))
    print(f"peak memory: {summary['results'][0]['memory']}; params: {summary['results'][0]['num_params']:,}")
    if "flax_over_torch" in summary:
        ratio = summary["flax_over_torch"]
        print(f"flax / torch steps/s ratio: train {ratio['train']:.2f}, eval {ratio['eval']:.2f}")
    _write_json(args.json, summary)
    return 0


def _write_json(path: str | None, summary: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2, default=str)


# ---------------------------------------------------------------------------- decode

def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sentences", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--json", default=None)


def decode_benchmark(sentences: int = 20_000, batch: int = 256) -> dict[str, Any]:
    """Host span decoding (tools.benchmark_host.benchmark_decode): sentences per CPU-second."""
    from tools.benchmark_host import benchmark_decode

    rate = benchmark_decode(n=sentences, batch_size=batch)
    return {"benchmark": "decode", "sentences": sentences, "batch": batch, "sentences_per_s": rate}


def _decode_run(args: argparse.Namespace) -> int:
    r = decode_benchmark(args.sentences, args.batch)
    print(f"host decoding, one core: {r['sentences_per_s']:.0f} sentences/s "
          f"({args.sentences} sentences, batches of {args.batch})")
    _write_json(args.json, r)
    return 0


# ---------------------------------------------------------------------------- data

def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prepared-dir", default=None,
                   help="TFDS data dir for the sample's build (built there first when empty); "
                        "default: a temporary folder")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--crop-mode", default="fixed", help="fixed | center | random")
    p.add_argument("--json", default=None)


def data_benchmark(prepared_dir: str | None = None, batch: int = 32, batches: int = 300,
                   crop_mode: str = "fixed") -> dict[str, Any]:
    """Training iterator examples/s on the bundled sample, images on, read from
    its TFDS build (tools.benchmark_host.benchmark_train_iter)."""
    import tempfile

    from configs import demo
    from data_pipeline import builders, pipeline
    from tools.benchmark_host import benchmark_train_iter

    cfg = demo.get_config().data
    cfg.crop_mode = crop_mode
    with tempfile.TemporaryDirectory() as tmp:
        cfg.prepared_dir = prepared_dir or tmp
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress; keep stdout for tables
            builders.build(cfg)  # reuses a matching build
        build_s = time.perf_counter() - t0
        split = pipeline.load_split(cfg, "train")
        r = benchmark_train_iter(cfg, split, global_batch_size=batch, num_batches=batches)
    return {"benchmark": "data", "source": split.source, "examples": split.num_examples,
            "images": split.images is not None, "crop_mode": crop_mode, "build_s": build_s, **r}


def _data_run(args: argparse.Namespace) -> int:
    r = data_benchmark(args.prepared_dir, args.batch, args.batches, args.crop_mode)
    print(f"train iterator ({r['source']}, {r['examples']} examples, images "
          f"{'on' if r['images'] else 'off'}, crop {r['crop_mode']}), batch {r['global_batch_size']}: "
          f"{r['examples_per_s']:.0f} examples/s")
    _write_json(args.json, r)
    return 0


# ---------------------------------------------------------------------------- all

def _all_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--prepared-dir", default=None, help="as for `data`")


def _all_run(args: argparse.Namespace) -> int:
    """Every CPU-feasible benchmark, then one Markdown table on stdout."""
    spec = _model_spec(args)
    model = model_benchmark(spec, skip_torch=args.skip_torch)
    decode = decode_benchmark()
    data = data_benchmark(args.prepared_dir)
    rows = []
    for r in model["results"]:
        for phase in ("train", "eval"):
            p = r[phase]
            rows.append((f"JML {phase} step", r["framework"], r["device"], f"{p['steps_per_s']:.3f} steps/s",
                         f"{p['examples_per_s']:.1f} examples/s", f"{p['compile_s']:.1f}",
                         f"{p['peak_bytes'] / 2**20:.0f}"))
    rows.append(("span decoding", "numpy (host)", "1 core", "",
                 f"{decode['sentences_per_s']:.0f} sentences/s", "", ""))
    rows.append(("train iterator", f"numpy ({data['source']})", "host", "",
                 f"{data['examples_per_s']:.0f} examples/s", "", ""))
    print(f"Setup: {_describe_spec(spec)}; decoding {decode['sentences']} sentences; "
          f"iterator batch {data['global_batch_size']} with images ({data['crop_mode']} crop).\n")
    print("| benchmark | implementation | device | rate | throughput | compile / 1st step (s) | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if "flax_over_torch" in model:
        ratio = model["flax_over_torch"]
        print(f"\nJAX / PyTorch steps/s: train {ratio['train']:.2f}x, eval {ratio['eval']:.2f}x.")
    _write_json(args.json, {"model": model, "decode": decode, "data": data})
    return 0


# Subcommands: name -> (add_arguments, run). Other benchmarks are added here.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], int]]] = {
    "encoders": (_encoders_args, _encoders_run),
    "model": (_model_args, _model_run),
    "decode": (_decode_args, _decode_run),
    "data": (_data_args, _data_run),
    "all": (_all_args, _all_run),
}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands(__doc__.split("\n\n")[0], SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
