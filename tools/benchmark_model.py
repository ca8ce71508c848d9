"""The full JML model's train and eval steps, timed in JAX and in eager PyTorch.

Used by ``python -m launch.benchmark model`` (see tools/benchmarks.py for the
commands). Each function here runs in its own fresh process and returns a
plain dict, so the two frameworks never share a process.

Per framework, the eval step runs first and the train step second, and the
peak memory is read after each: JAX's ``peak_bytes_in_use`` (GPU/TPU) or the
process's max RSS (CPU) can only grow, so the eval figure is the eval step's
own high-water mark (with the parameters and optimizer state resident, as in
a run that evaluates between training steps) and the train figure covers both.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

import numpy as np

NUM_SPANS = 20  # M, the span slots of a batch (= n_best_size, §6)
CROP = 224


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What is benchmarked: sizes of the model and of one global batch.

    bert: BERT preset ('bert-base', 'minilm-l6', 'tiny').
    resnet_depth: 152 (the paper), 101, 50, ...; resnet_blocks overrides the
      per-stage block counts, resnet_width the stem width (64 = torchvision).
    grad_accum: micro-batches per optimizer step (the batch is split); the
      JAX side runs them as the config's ``optimizer.accumulation`` does
      (one pass over G groups by default), the PyTorch twin as G sequential
      forward/backward passes.
    matmul_precision: 'tf32' or 'highest', set explicitly on both sides
      (``jax_default_matmul_precision`` = 'tensorfloat32' / 'highest';
      ``torch.backends.{cuda.matmul,cudnn}.allow_tf32``). Only float32
      matmuls are affected; bfloat16 rows record it all the same.
    torch_compile: time ``torch.compile`` of the PyTorch twin instead of eager.
    """

    bert: str = "bert-base"
    resnet_depth: int = 152
    resnet_blocks: tuple[int, ...] | None = None
    resnet_width: int = 64
    text_only: bool = False
    batch: int = 32
    length: int = 96
    dtype: str = "float32"
    grad_accum: int = 1
    steps: int = 10
    warmup: int = 2
    seed: int = 0
    matmul_precision: str = "tf32"
    torch_compile: bool = False


def make_batch(spec: ModelSpec, vocab_size: int) -> dict[str, np.ndarray]:
    """A random training batch of the joint model's inputs (NumPy, [B, ...]):
    the shared synthetic batch (`jml_jax.contract.synthetic_batch`) of the
    joint task's contract (`jml_jax.contract.joint_inputs`).

    Rows are padded to lengths L/2..L; two gold aspects per row, both in the
    MATE targets and the MASC span slots; images uint8 [B, 224, 224, 3].
    """
    from jml_jax import contract

    if spec.length < 8:
        raise ValueError(f"length must be >= 8 to hold two aspects, got {spec.length}")
    inputs = contract.joint_inputs(spec.batch, length=spec.length, spans=NUM_SPANS, train=True,
                                   image_size=None if spec.text_only else CROP)
    return contract.synthetic_batch(inputs, seed=spec.seed, vocab_size=vocab_size, aspects=2)


def experiment_config(spec: ModelSpec):
    """configs/twitter2015.py with random weights and the spec's sizes."""
    from configs import twitter2015

    c = twitter2015.get_config("text_only" if spec.text_only else None)
    c.model.bert = spec.bert
    c.model.bert_init = None
    c.model.resnet_init = None
    c.model.relation_init = None
    c.model.resnet_depth = spec.resnet_depth
    c.model.resnet_blocks = tuple(spec.resnet_blocks) if spec.resnet_blocks else None
    c.model.resnet_width = spec.resnet_width
    c.model.dtype = spec.dtype
    c.data.max_seq_length = spec.length
    c.batch_size = c.eval_batch_size = spec.batch
    c.optimizer.grad_accum_steps = spec.grad_accum
    # One device, like the PyTorch twin it is compared with: a mesh over every
    # device would also have to divide the batch's groups among them (8 fake
    # CPU devices cannot share 2 groups).
    c.mesh_shape = (1, 1, 1)
    # The relation module stays inside the steps, as in the PyTorch twin (the
    # precomputed relation cache would need relation_probs in the batch).
    if "relation_cache" in c.model:
        c.model.relation_cache = "off"
    return c


# Datasheet dense peaks (TFLOP/s, without 2:4 sparsity) per device kind, matched
# by substring of jax's ``device_kind`` / torch's device name, most specific first.
# Sources: NVIDIA H100 Tensor Core GPU datasheet (SXM: BF16 1,979 / TF32 989 /
# FP32 67 TFLOP/s with sparsity for the tensor-core figures, halved here;
# PCIe: 1,513 / 756 / 51); NVIDIA H200 Tensor Core GPU datasheet (SXM: the same
# tensor-core figures as H100 SXM); NVIDIA A100 Tensor Core GPU datasheet
# (BF16 312, TF32 156, FP32 19.5 dense); NVIDIA L4 datasheet (BF16 242 / TF32
# 120 with sparsity, FP32 30.3); Google Cloud TPU system architecture pages
# (v4: 275, v5e: 197, v5p: 459 bf16 TFLOP/s per chip).
DATASHEET_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989.0, "tf32": 494.5, "float32": 67.0}),
    ("H100 PCIe", {"bfloat16": 756.5, "tf32": 378.0, "float32": 51.0}),
    ("H100", {"bfloat16": 989.0, "tf32": 494.5, "float32": 67.0}),  # SXM / HBM3
    ("A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
    ("L4", {"bfloat16": 121.0, "tf32": 60.0, "float32": 30.3}),
    ("TPU v4", {"bfloat16": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),
    ("TPU v5e", {"bfloat16": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0}),
)


def compute_kind(spec: ModelSpec) -> str:
    """What the matmuls of the run execute as: 'bfloat16', 'tf32' or 'float32'."""
    if spec.dtype == "bfloat16":
        return "bfloat16"
    return "tf32" if spec.matmul_precision == "tf32" else "float32"


def datasheet_peak_tflops(device_kind: str, kind: str) -> float | None:
    """The datasheet's dense peak for this device and compute kind, or None (unknown, CPU)."""
    for name, peaks in DATASHEET_PEAKS:
        if name.lower() in device_kind.lower():
            return peaks.get(kind)
    return None


def set_jax_matmul_precision(precision: str) -> None:
    import jax

    jax.config.update("jax_default_matmul_precision",
                      {"tf32": "tensorfloat32", "highest": "highest"}[precision])


def set_torch_matmul_precision(precision: str) -> None:
    import torch

    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def measure_matmul_ceiling(kind: str, n: int | None = None, reps: int = 10) -> dict[str, Any]:
    """Achieved TFLOP/s of a large square matmul on JAX's default device.

    ``kind`` picks the operands (bfloat16, or float32 under the matmul
    precision already set). n defaults to 8192 on accelerators and 1024 on CPU;
    ``reps`` chained products run in one jit call, timed after a warm-up call.
    """
    import jax
    import jax.numpy as jnp

    platform = jax.devices()[0].platform
    n = n or (1024 if platform == "cpu" else 8192)
    dtype = jnp.bfloat16 if kind == "bfloat16" else jnp.float32
    ka, kb = jax.random.split(jax.random.key(0))
    a = (jax.random.normal(ka, (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)
    b = (jax.random.normal(kb, (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)

    @jax.jit
    def chain(a, b):
        return jax.lax.fori_loop(0, reps, lambda _, x: (x @ b).astype(dtype), a)

    jax.block_until_ready(chain(a, b))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(chain(a, b))
        best = min(best, time.perf_counter() - t0)
    return {"kind": kind, "n": n, "reps": reps, "tflops": 2.0 * n**3 * reps / best / 1e12}


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled JAX function, from XLA's ``cost_analysis()``."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def mfu(flops_per_step: float | None, steps_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over a peak (TFLOP/s); None when either is unknown."""
    if not flops_per_step or not peak_tflops:
        return None
    return flops_per_step * steps_per_s / (peak_tflops * 1e12)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _jax_peak_bytes() -> tuple[int, str]:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return _rss_bytes(), "process max RSS"


def _timed_loop(fn, steps: int, warmup: int, sync) -> tuple[float, Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    sync(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn()
    sync(out)
    return time.perf_counter() - t0, out


def bench_flax_model(spec: ModelSpec) -> dict[str, Any]:
    """jml_jax's jitted train step (as the trainer builds it) and eval step
    (extraction + classification on the batch's spans, one jit)."""
    import jax

    set_jax_matmul_precision(spec.matmul_precision)
    from jml_jax import contract
    from jml_jax.experiment import build_experiment
    from jml_jax.models.jml import JMLModel
    from jml_jax.sharding import batch_sharding, global_batch_from_process_local
    from jml_jax.steps import make_eval_step

    config = experiment_config(spec)
    t0 = time.perf_counter()
    s = build_experiment(config, devices=jax.devices()[:1], num_train_steps=spec.steps + spec.warmup + 1)
    state = s.random_state()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    model = s.model
    vocab = model.config.bert.vocab_size
    host = make_batch(spec, vocab)
    gbatch = global_batch_from_process_local(contract.take(host, s.inputs(train=True)), s.mesh)
    bsh = batch_sharding(s.mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

    def forward(params, batch_stats, batch):
        variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
        out = model.apply(variables, batch["input_ids"], batch["input_mask"], batch.get("image"),
                          method=JMLModel.extract)
        polarity = model.apply(variables, out["sequence_output"], out["image_features"], batch["input_mask"],
                               batch["span_starts"], batch["span_ends"], method=JMLModel.classify)
        return out["start_logits"], out["end_logits"], polarity

    results = {"framework": "flax (jit)", "device": jax.devices()[0].platform,
               "device_kind": jax.devices()[0].device_kind, "num_devices": 1,
               "init_s": init_s, "num_params": n_params, "matmul_precision": spec.matmul_precision,
               "accumulation": str(config.optimizer.get("accumulation", "one_pass")),
               "grad_accum": int(config.optimizer.grad_accum_steps)}

    eval_step = make_eval_step(forward, s.shardings, bsh, rules=s.rules)
    t0 = time.perf_counter()
    eval_compiled = eval_step.lower(state, gbatch).compile()
    compile_s = time.perf_counter() - t0
    elapsed, _ = _timed_loop(lambda: eval_compiled(state, gbatch), spec.steps, spec.warmup,
                             jax.block_until_ready)
    peak, how = _jax_peak_bytes()
    results["eval"] = {"compile_s": compile_s, "steps_per_s": spec.steps / elapsed,
                       "examples_per_s": spec.steps * spec.batch / elapsed, "peak_bytes": peak,
                       "flops_per_step": compiled_flops(eval_compiled)}

    train_step = s.make_train_step()  # the trainer's own step, accumulation as configured
    t0 = time.perf_counter()
    train_compiled = train_step.lower(state, gbatch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = train_compiled(holder["state"], gbatch)
        return metrics

    elapsed, metrics = _timed_loop(one_step, spec.steps, spec.warmup, jax.block_until_ready)
    peak, how = _jax_peak_bytes()
    results["train"] = {"compile_s": compile_s, "steps_per_s": spec.steps / elapsed,
                        "examples_per_s": spec.steps * spec.batch / elapsed, "peak_bytes": peak,
                        "final_loss": float(metrics["loss"]), "flops_per_step": compiled_flops(train_compiled)}
    results["memory"] = how
    # XLA counts a while loop's body once: in 'scan' accumulation the train
    # step's FLOPs are one micro-batch's plus the update, so scale them up.
    if results["accumulation"] == "scan" and results["grad_accum"] > 1 and results["train"]["flops_per_step"]:
        results["train"]["flops_per_step"] *= results["grad_accum"]
        results["train"]["flops_note"] = "scan body counted once by XLA; scaled by grad_accum"
    kind = compute_kind(spec)
    results["compute_kind"] = kind
    results["matmul_ceiling"] = measure_matmul_ceiling(kind)
    results["datasheet_peak_tflops"] = datasheet_peak_tflops(results["device_kind"], kind)
    return results


def bench_torch_model(spec: ModelSpec) -> dict[str, Any]:
    """tools/torch_jml.py's model: the same shapes, AdamW (foreach) with
    global-norm clipping, torch.autocast for bfloat16, parameters float32.
    Eager, or ``torch.compile``d when ``spec.torch_compile`` (then the first
    step's time, compile included, is reported as compile_s)."""
    import contextlib

    import torch

    set_torch_matmul_precision(spec.matmul_precision)

    from jml_jax.models.bert import get_bert_config
    from jml_jax.facts import IMAGE_MEAN, IMAGE_STD
    from jml_jax.models.resnet import RESNET_BLOCKS, is_bottleneck
    from tools import torch_jml

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bert_cfg = get_bert_config(spec.bert)
    torch.manual_seed(spec.seed)
    t0 = time.perf_counter()
    model = torch_jml.TorchJML(
        bert_cfg, resnet_blocks=tuple(spec.resnet_blocks or RESNET_BLOCKS[spec.resnet_depth]),
        bottleneck=is_bottleneck(spec.resnet_depth), resnet_width=spec.resnet_width,
        use_images=not spec.text_only,
    ).to(device)
    init_s = time.perf_counter() - t0
    host = make_batch(spec, bert_cfg.vocab_size)
    batch = {k: torch.from_numpy(v).to(device) for k, v in host.items() if k != "image"}
    batch = {k: v.long() if k in ("input_ids", "input_mask", "span_starts", "span_ends", "polarity_labels")
             else v.float() for k, v in batch.items()}
    images_u8 = torch.from_numpy(host["image"]).to(device) if "image" in host else None
    mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)

    def pixels(rows=slice(None)):
        if images_u8 is None:
            return None
        return (images_u8[rows].permute(0, 3, 1, 2).float() / 255.0 - mean) / std  # §1.4 on device

    def autocast():
        if spec.dtype == "bfloat16":
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(_=None):
        if device == "cuda":
            torch.cuda.synchronize()

    def peak():
        if device == "cuda":
            return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
        return _rss_bytes(), "process max RSS"

    n_params = sum(p.numel() for p in model.parameters())
    results = {"framework": "torch (compile)" if spec.torch_compile else "torch (eager)", "device": device,
               "device_kind": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "init_s": init_s, "num_params": n_params, "matmul_precision": spec.matmul_precision,
               "torch_version": torch.__version__}

    def eval_forward(ids, mask, px, span_starts, span_ends):
        start, end, seq, image = model.extract(ids, mask, px)
        return start, end, model.classify(seq, image, mask, span_starts, span_ends)

    train_model = model
    if spec.torch_compile:
        eval_forward = torch.compile(eval_forward)
        train_model = torch.compile(model)

    def eval_step():
        grad_off = torch.no_grad() if spec.torch_compile else torch.inference_mode()
        with grad_off, autocast():
            return eval_forward(batch["input_ids"], batch["input_mask"], pixels(),
                                batch["span_starts"], batch["span_ends"])

    model.eval()
    t0 = time.perf_counter()
    eval_step()
    sync()
    first_s = time.perf_counter() - t0
    elapsed, _ = _timed_loop(eval_step, spec.steps, max(spec.warmup - 1, 0), sync)
    mem, how = peak()
    results["eval"] = {"compile_s": first_s, "steps_per_s": spec.steps / elapsed,
                       "examples_per_s": spec.steps * spec.batch / elapsed, "peak_bytes": mem}

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=2e-5, weight_decay=0.01, foreach=True)
    accum = spec.grad_accum
    if spec.batch % accum:
        raise ValueError(f"batch {spec.batch} does not split into {accum} micro-batches")
    micro = spec.batch // accum

    def train_step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for a in range(accum):
            rows = slice(a * micro, (a + 1) * micro)
            mb = {k: v[rows] for k, v in batch.items()}
            with autocast():
                start, end, polarity = train_model(mb["input_ids"], mb["input_mask"], mb["span_starts"],
                                             mb["span_ends"], pixels(rows))
                loss = torch_jml.jml_loss(start, end, polarity, mb) / accum
            loss.backward()
            total = total + loss.detach()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        return total

    t0 = time.perf_counter()
    train_step()
    sync()
    first_s = time.perf_counter() - t0
    elapsed, loss = _timed_loop(train_step, spec.steps, max(spec.warmup - 1, 0), sync)
    mem, how = peak()
    results["train"] = {"compile_s": first_s, "steps_per_s": spec.steps / elapsed,
                        "examples_per_s": spec.steps * spec.batch / elapsed, "peak_bytes": mem,
                        "final_loss": float(loss)}
    results["memory"] = how
    return results
