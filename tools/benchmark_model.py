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
    grad_accum: micro-batches per optimizer step (the batch is split).
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


def make_batch(spec: ModelSpec, vocab_size: int) -> dict[str, np.ndarray]:
    """A random training batch of the model's shapes (NumPy, [B, ...]).

    Rows are padded to lengths L/2..L; two gold aspects per row, both in the
    MATE targets and the MASC span slots; images uint8 [B, 224, 224, 3].
    """
    rng = np.random.default_rng(spec.seed)
    b, length = spec.batch, spec.length
    if length < 8:
        raise ValueError(f"length must be >= 8 to hold two aspects, got {length}")
    lengths = rng.integers(length // 2, length + 1, b)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, vocab_size, (b, length)).astype(np.int32) * mask
    start_pos = np.zeros((b, length), np.int32)
    end_pos = np.zeros((b, length), np.int32)
    starts = np.zeros((b, NUM_SPANS), np.int32)
    ends = np.zeros((b, NUM_SPANS), np.int32)
    labels = np.zeros((b, NUM_SPANS), np.int32)
    span_mask = np.zeros((b, NUM_SPANS), np.int32)
    for i, n in enumerate(lengths):
        half = int(n) // 2  # one aspect in each half, inside [CLS] ... [SEP]
        for j, (lo, last) in enumerate(((1, half - 1), (half, int(n) - 2))):
            s = int(rng.integers(lo, last + 1))
            e = min(s + int(rng.integers(0, 3)), last)
            start_pos[i, s] = end_pos[i, e] = 1
            starts[i, j], ends[i, j], span_mask[i, j] = s, e, 1
            labels[i, j] = int(rng.integers(1, 4))
    batch = {
        "input_ids": ids, "input_mask": mask, "start_positions": start_pos,
        "end_positions": end_pos, "span_starts": starts, "span_ends": ends,
        "polarity_labels": labels, "span_mask": span_mask,
    }
    if not spec.text_only:
        batch["image"] = rng.integers(0, 256, (b, CROP, CROP, 3), dtype=np.uint8)
    return batch


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
    return c


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

    from jml_jax.experiment import build_experiment
    from jml_jax.models.jml import JMLModel
    from jml_jax.sharding import batch_sharding, global_batch_from_process_local
    from jml_jax.steps import make_eval_step

    config = experiment_config(spec)
    t0 = time.perf_counter()
    s = build_experiment(config, num_train_steps=spec.steps + spec.warmup + 1)
    state = s.random_state()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    model = s.model
    vocab = model.config.bert.vocab_size
    host = make_batch(spec, vocab)
    keys = [k for k in s.task.batch_keys if k in host] + (["image"] if "image" in host else [])
    gbatch = global_batch_from_process_local({k: host[k] for k in keys}, s.mesh)
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
               "device_kind": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
               "init_s": init_s, "num_params": n_params}

    eval_step = make_eval_step(forward, s.shardings, bsh, rules=s.rules)
    t0 = time.perf_counter()
    eval_compiled = eval_step.lower(state, gbatch).compile()
    compile_s = time.perf_counter() - t0
    elapsed, _ = _timed_loop(lambda: eval_compiled(state, gbatch), spec.steps, spec.warmup,
                             jax.block_until_ready)
    peak, how = _jax_peak_bytes()
    results["eval"] = {"compile_s": compile_s, "steps_per_s": spec.steps / elapsed,
                       "examples_per_s": spec.steps * spec.batch / elapsed, "peak_bytes": peak}

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
                        "final_loss": float(metrics["loss"])}
    results["memory"] = how
    return results


def bench_torch_model(spec: ModelSpec) -> dict[str, Any]:
    """tools/torch_jml.py's eager model: the same shapes, AdamW (foreach) with
    global-norm clipping, torch.autocast for bfloat16, parameters float32."""
    import contextlib

    import torch

    from jml_jax.models.bert import get_bert_config
    from jml_jax.models.jml import IMAGE_MEAN, IMAGE_STD
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
    results = {"framework": "torch (eager)", "device": device,
               "device_kind": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "init_s": init_s, "num_params": n_params}

    def eval_step():
        with torch.inference_mode(), autocast():
            start, end, seq, image = model.extract(batch["input_ids"], batch["input_mask"], pixels())
            polarity = model.classify(seq, image, batch["input_mask"], batch["span_starts"], batch["span_ends"])
        return start, end, polarity

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
                start, end, polarity = model(mb["input_ids"], mb["input_mask"], mb["span_starts"],
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
