"""Compile-only plans of a config on a TPU topology: memory, FLOPs, collectives, roofline.

`plan(config, topology)` builds the real train step and the two eval functions
of a config (real shapes, shardings and optimizer state; no weights loaded, no
data read) over the devices of a TPU slice described by libtpu
(``jax.experimental.topologies``; no TPU attached), lowers them from
``jax.ShapeDtypeStruct``s that carry their shardings, compiles them, and reads
per-chip memory (``memory_analysis``), FLOPs and bytes accessed
(``cost_analysis``) and the collectives of the compiled HLO. A roofline from
the chip's published peak bf16 FLOP/s, HBM bandwidth and interconnect
bandwidth (`CHIPS`) turns those into a step-time estimate (`analyse`): a
compile-time estimate, never a measurement. The train step's FLOPs and bytes
are split into forward, backward, optimizer, collectives and other
(`phase_split`). Beside XLA's ``bytes accessed`` (every operand and result of
every instruction, on-chip ones included), the plan counts the HBM-resident
traffic (`tools.hlo_stats.hbm_traffic`, by the memory spaces XLA assigned)
and a second roofline from it: the two bracket the memory term.

Loops. XLA's ``cost_analysis`` counts the body of a while loop once, not times
its trip count. The planner reads the compiled HLO itself (`tools.hlo_stats`):
it finds each while loop's trip count and adds ``(trip - 1)`` runs of the
body, costed by XLA's own cost model on the body alone (`xla_cost`), so a
sequential gradient-accumulation scan is counted in full (exact for loops that
are not nested in other loops). Collectives and the per-device batch are
counted with the same multiplicities.

The one place that touches the trainer's internals is `_build`.
libtpu comes from requirements-plan.txt (``pip install -r requirements-plan.txt``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import re
import time
from typing import Any, Callable, Sequence

import jax

from jml_jax.axes import DATA, FSDP, MESH_AXES
from tools.hlo_stats import hbm_traffic, phase_costs, summarize_hlo, xla_cost

# ---------------------------------------------------------------------------
# Chips: published per-chip peak bf16 compute, HBM capacity, HBM bandwidth and
# inter-chip interconnect (ICI) bandwidth. GB in Google's tables is read as
# 10^9 bytes (the smaller reading: `fits` errs on the safe side); v4's table
# says GiB. ICI: the published per-chip "Interchip Interconnect BW" of each
# chip's page, in Gbps, divided by 8 (the same pages now also state a
# "bidirectional ICI bandwidth (per chip)" of twice that in GBps, e.g. v5e
# 400 GBps = 2 x 1600 Gbps / 8; the smaller figure is used, as if a collective's
# bytes went one way). The v4 page gives no
# per-chip ICI figure: v4's 2400 Gbps is the published per-chip figure from
# Google's v5p announcement (which compares v5p's 4800 Gbps with it), not
# confirmed against a Cloud TPU docs page.


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    name: str
    peak_bf16_flops_per_s: float
    hbm_bytes: int
    hbm_bytes_per_s: float
    ici_bytes_per_s: float
    source: str
    ici_source: str = ""
    # libtpu's compile-only topology option: one JAX device per chip
    # (v4 and v5p chips hold two TensorCores that run as one "megacore").
    chip_config_name: str = "default"
    # Dimensions of a slice's shape: v5e and v6e slices are 2D tori ('v5e:2x4'),
    # v4 and v5p slices 3D ('v5p:2x2x1'). libtpu lays out either form for any
    # chip, so a shape of the wrong rank would plan a slice that does not exist.
    slice_dims: int = 2


CHIPS: dict[str, ChipSpec] = {
    # "Peak compute per chip (bf16) 197 TFLOPs; HBM2 capacity and bandwidth 16 GB, 819 GBps;
    #  Interchip Interconnect BW 1600 Gbps"
    "v5e": ChipSpec("v5e", 197e12, 16 * 10**9, 819e9, 1600e9 / 8, "https://cloud.google.com/tpu/docs/v5e",
                    ici_source="https://cloud.google.com/tpu/docs/v5e"),
    # "Peak compute per chip (bf16) 459 TFLOPs; HBM2e capacity and bandwidth 95 GB, 2765 GBps;
    #  Interchip Interconnect BW 4800 Gbps"
    "v5p": ChipSpec("v5p", 459e12, 95 * 10**9, 2765e9, 4800e9 / 8, "https://cloud.google.com/tpu/docs/v5p",
                    ici_source="https://cloud.google.com/tpu/docs/v5p",
                    chip_config_name="megacore", slice_dims=3),
    # "Peak compute per chip 275 teraflops (bf16 or int8); HBM2 capacity and bandwidth 32 GiB, 1200 GBps";
    # ICI "2,400 Gbps/chip" (v5p announcement; not on the v4 page)
    "v4": ChipSpec("v4", 275e12, 32 * 2**30, 1200e9, 2400e9 / 8, "https://cloud.google.com/tpu/docs/v4",
                   ici_source="https://cloud.google.com/blog/products/ai-machine-learning/introducing-cloud-tpu-v5p-and-ai-hypercomputer",
                   chip_config_name="megacore", slice_dims=3),
    # "Peak compute per chip (bf16) 918 TFLOPs; HBM capacity per chip 32 GB; HBM bandwidth per chip 1638 GBps;
    #  Inter-chip interconnect (ICI) bandwidth 3584 Gbps"
    "v6e": ChipSpec("v6e", 918e12, 32 * 10**9, 1638e9, 3584e9 / 8, "https://cloud.google.com/tpu/docs/v6e",
                    ici_source="https://cloud.google.com/tpu/docs/v6e"),
}

LIBTPU_HINT = "install libtpu for compile-only planning: pip install -r requirements-plan.txt"


class PlanError(ValueError):
    """A topology, mesh or batch that cannot be planned (the message says why)."""


def chip_of(topology: str) -> ChipSpec:
    """``'v5e:2x4'`` -> the v5e `ChipSpec`."""
    gen, sep, shape = topology.partition(":")
    if not sep or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
        raise PlanError(
            f"topology {topology!r} must look like '<chip>:<shape>', e.g. 'v5e:2x4' or 'v5p:2x2x1'"
        )
    if gen not in CHIPS:
        raise PlanError(f"topology {topology!r}: unknown chip {gen!r}; known: {sorted(CHIPS)}")
    chip = CHIPS[gen]
    sizes = [int(s) for s in shape.split("x")]
    if min(sizes) < 1:
        raise PlanError(f"topology {topology!r}: wrong shape {shape}: every size must be at least 1")
    if len(sizes) != chip.slice_dims:
        example = "2x4" if chip.slice_dims == 2 else "2x2x1"
        rank = {2: "two", 3: "three"}[chip.slice_dims]
        raise PlanError(f"topology {topology!r}: wrong shape {shape}: {gen} slices are {rank}-dimensional "
                        f"(e.g. '{gen}:{example}'), this shape has {len(sizes)} dimensions")
    return chip


def topology_devices(topology: str) -> list:
    """The compile-only devices of a TPU slice, one per chip.

    A one-chip slice (``v5e:1x1``, sold as v5litepod-1) is one chip of the
    smallest slice libtpu lays out (its host's 2x2 chips): a program on one
    device compiles the same wherever that device sits.
    """
    chip = chip_of(topology)
    shape = [int(s) for s in topology.partition(":")[2].split("x")]
    if all(s == 1 for s in shape):
        host = "x".join(["2", "2"] + ["1"] * (len(shape) - 2))
        return topology_devices(f"{chip.name}:{host}")[:1]
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topology, chip_config_name=chip.chip_config_name
        )
    except ImportError as err:
        raise PlanError(f"cannot describe TPU topology {topology!r} ({err}); {LIBTPU_HINT}") from err
    except RuntimeError as err:
        # libtpu is there when it answers; a refusal then is about the shape.
        if importlib.util.find_spec("libtpu") is None:
            raise PlanError(f"cannot describe TPU topology {topology!r} ({err}); {LIBTPU_HINT}") from err
        raise PlanError(f"topology {topology!r}: libtpu cannot lay out a {chip.name} slice of this "
                        f"shape ({err})") from err
    return list(desc.devices)


def parse_mesh(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``'8,1,1'`` -> ``(8, 1, 1)`` (``-1`` allowed once); None stays None."""
    if text is None or text == "":
        return None
    if isinstance(text, str):
        try:
            sizes = tuple(int(s) for s in text.split(","))
        except ValueError:
            raise PlanError(f"mesh {text!r} must be {len(MESH_AXES)} comma-separated ints {MESH_AXES}") from None
    else:
        sizes = tuple(int(s) for s in text)
    if len(sizes) != len(MESH_AXES):
        raise PlanError(f"mesh {text!r} must have {len(MESH_AXES)} sizes, one per axis {MESH_AXES}")
    return sizes


# ---------------------------------------------------------------------------
# The trainer's internals, in one place.


@dataclasses.dataclass
class Built:
    """What `_build` hands the planner."""

    mesh: Any
    train_step: Callable  # jitted (state, batch) -> (state, metrics)
    eval_fns: dict[str, tuple[Callable, tuple]]  # name -> (jitted fn, abstract args)
    train_args: tuple  # abstract (state, batch) with shardings
    grad_accum_steps: int
    eval_calls_per_batch: dict[str, int]  # how often each eval fn runs per eval batch


def _build(config, devices, *, activation_constraints: bool = True) -> Built:
    """Builds the config's jitted train step and eval functions over ``devices``.

    The only function here that knows how the trainer assembles a model,
    optimizer, state and steps (`jml_jax.experiment`); repoint it when that
    assembly moves.
    """
    from jml_jax.experiment import build_experiment
    from jml_jax.population import build_population
    from jml_jax.runs import runs_spec
    from jml_jax.sharding import batch_sharding

    pop = None
    if runs_spec(config) is not None:  # a population: its mesh has a runs axis
        pop = build_population(config, devices=devices, num_train_steps=1000)
        exp = pop.exp
    else:
        exp = build_experiment(config, devices=devices, num_train_steps=1000)
    if not activation_constraints:  # the step without rules: model-code constraints are no-ops
        exp = dataclasses.replace(exp, rules=None)
        if pop is not None:
            pop = dataclasses.replace(pop, exp=exp)
    # A population evaluates one run at a time on a mesh of every device (`eval_exp`).
    eval_exp = exp if pop is None else pop.eval_exp
    if not activation_constraints:
        eval_exp = dataclasses.replace(eval_exp, rules=None)
    bsh = batch_sharding(eval_exp.mesh)

    def with_batch_sharding(b):
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in b.items()}

    # The abstract batches are the task's own statement of its inputs (jml_jax/contract.py).
    if pop is None:
        step, train_args = exp.make_train_step(), (exp.abstract_state, with_batch_sharding(exp.inputs(train=True)))
    else:  # every run's state and batch behind a leading [R] on the runs axis
        step, train_args = pop.make_train_step(), (pop.abstract_state, pop.inputs(train=True))
    evaluator = eval_exp.make_evaluator()
    state = eval_exp.abstract_state  # ShapeDtypeStructs carrying their shardings
    eval_batch = with_batch_sharding(exp.inputs(train=False))
    extract_args = (state.params, state.batch_stats, eval_batch)
    _, kept = jax.eval_shape(evaluator._extract, *extract_args)
    kept = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=bsh), kept)
    classify_args = (state.params, state.batch_stats, kept, eval_batch["input_mask"],
                     eval_batch["span_starts"], eval_batch["span_ends"])
    return Built(
        mesh=exp.mesh,
        train_step=step,
        eval_fns={"extract": (evaluator._extract, extract_args), "classify": (evaluator._classify, classify_args)},
        train_args=train_args,
        grad_accum_steps=int(config.optimizer.grad_accum_steps),
        # jml_jax.evaluators.Evaluator.predict_split: one extraction (which
        # classifies the gold spans too), then the decoded spans' classification.
        eval_calls_per_batch={"extract": 1, "classify": 1},
    )


# ---------------------------------------------------------------------------
# Compiling and reporting.


def _compile(fn, args, hlo_path=None) -> tuple[Any, float]:
    """``(compiled, seconds)``; with ``hlo_path`` the compiled module's HLO text
    is written there (to read where the bytes go, op by op)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - t0
    if hlo_path is not None:
        pathlib.Path(hlo_path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(hlo_path).write_text(compiled.as_text())
    return compiled, seconds


def _cost(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


SPLIT_KEYS = ("forward", "backward", "optimizer", "collectives", "other")


def phase_split(text: str, flops: float, bytes_accessed: float) -> dict[str, Any]:
    """The train step's FLOPs and bytes accessed per chip split by phase (`SPLIT_KEYS`).

    Method (`tools.hlo_stats.phase_costs`): every instruction of the compiled
    module's entry computation and while bodies is classified by the
    ``op_name`` metadata JAX traced into it (`tools.hlo_stats.classify_phases`):

    * ``forward``: the forward pass of ``value_and_grad`` (``jvp(...)`` ops);
    * ``backward``: its transpose (``transpose(jvp(...))`` ops);
    * ``optimizer``: everything computed from the gradients, outside the
      differentiated function: ``tx.update`` (the whole optimizer chain),
      ``optax.apply_updates``, the finite check and the tree-wide
      ``jnp.where(is_finite, new, old)`` select, and the gradient-norm metric;
      plus unlabelled copies that only the update reads (e.g. the optimizer
      state moved between memory spaces);
    * ``collectives``: every collective instruction, whichever phase it serves
      (the gradient all-reduce included);
    * ``other``: instructions of none of these (the step counter, the step's
      RNG folding, unlabelled copies read by several phases) and the
      remainder below.

    Each phase's instructions are costed by XLA's own cost model (the host's,
    through `tools.hlo_stats.xla_cost`: libtpu exposes no cost model for a
    module it did not compile) as a module that runs only them, loop bodies
    counted trip-count times. The host model counts bytes differently from the
    TPU's (the TPU's counts tile padding, e.g. f32[32] as a 128-lane tile), so
    every phase is scaled by one ratio, the TPU total over the host total of
    the whole module; ``other`` takes what the phases leave of the planner's
    total, so the five parts add up to ``flops`` and ``bytes_accessed``
    exactly. Caveats: a fusion goes wholly to the phase of its metadata (XLA
    names a fusion after one of its ops), and the one ratio spreads the TPU's
    padding evenly over the phases.
    """
    costs = phase_costs(text)
    out: dict[str, Any] = {}
    for key, total, model_key in (("flops_split", flops, "flops"), ("bytes_split", bytes_accessed, "bytes accessed")):
        whole = costs["whole"][model_key]
        ratio = total / whole if whole else 0.0
        parts = {p: costs[p][model_key] * ratio for p in SPLIT_KEYS[:-1]}
        parts["other"] = total - sum(parts.values())
        out[key] = parts
        out[key.replace("_split", "_tpu_over_host_ratio")] = ratio
    return out


def analyse(compiled, compile_seconds: float, chip: ChipSpec, watch_trailing=(), *,
            split: bool = False) -> dict[str, Any]:
    """One compiled function -> per-chip memory, loop-corrected cost, collectives, roofline.

    The roofline is max(FLOPs / peak bf16 FLOP/s, bytes accessed / HBM
    bandwidth, collective bytes / ICI bandwidth) per chip: the three engines
    (MXUs, HBM, interconnect) are taken to overlap perfectly, as XLA overlaps
    asynchronous collectives with compute, so the slowest one bounds the step
    (a sum would assume no overlap at all; both are estimates, the max is the
    optimistic one, like the rest of the roofline). Collective bytes are the
    results of every collective (every array of a tuple-shaped one) per step
    (`tools.hlo_stats.collective_bytes`) over the chip's published
    per-chip interconnect bandwidth: a first-order term that ignores the
    algorithm (a ring all-reduce sends about twice its array) and the links a
    mesh axis actually uses. ``split=True`` adds `phase_split`.

    ``hbm_traffic_*``: the same roofline with the memory term from the bytes
    that cross HBM only (`tools.hlo_stats.hbm_traffic`: operands in on-chip
    memory cost nothing, an asynchronous copy or slice between memory spaces
    counts once), per phase; XLA's ``bytes accessed`` counts on-chip operands
    and those copies too, so its memory term is the pessimistic one.
    """
    mem = compiled.memory_analysis()
    cost = _cost(compiled)
    text = compiled.as_text()
    hlo = summarize_hlo(text, watch_trailing)
    flops = float(cost.get("flops", 0.0))
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    repeated = [loop for loop in hlo.loops if (loop["trip_count"] or 1) > 1]
    if repeated:
        # XLA counted each loop body once: add the other (trip - 1) runs, costed
        # by XLA's cost model on the body alone. The host cost model counts
        # bytes differently from the TPU's; its ratio on the whole module
        # rescales the body's bytes.
        whole = xla_cost(text)
        ratio = bytes_accessed / whole["bytes accessed"] if whole["bytes accessed"] else 1.0
        for loop in repeated:
            body = xla_cost(text, loop["body"])
            extra = loop["times"] * (loop["trip_count"] - 1)
            loop["body_flops"] = body["flops"]
            flops += extra * body["flops"]
            bytes_accessed += extra * body["bytes accessed"] * ratio
    arg, out, temp = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes
    alias = getattr(mem, "alias_size_in_bytes", 0)
    code = getattr(mem, "generated_code_size_in_bytes", 0)
    total = arg + out - alias + temp + code
    collective_bytes = float(sum(c["bytes"] for c in hlo.collectives.values()))
    traffic = hbm_traffic(text)
    seconds = {
        "compute": flops / chip.peak_bf16_flops_per_s,
        "memory": bytes_accessed / chip.hbm_bytes_per_s,
        "interconnect": collective_bytes / chip.ici_bytes_per_s,
    }
    bound = max(seconds, key=seconds.get)
    step_s = seconds[bound]
    # The same roofline with the memory term from HBM-resident traffic only.
    hbm_seconds = dict(seconds, memory=traffic["whole"] / chip.hbm_bytes_per_s)
    hbm_bound = max(hbm_seconds, key=hbm_seconds.get)
    result = {
        "argument_bytes": int(arg), "output_bytes": int(out), "alias_bytes": int(alias),
        "temp_bytes": int(temp), "code_bytes": int(code), "total_bytes": int(total),
        "flops": flops, "bytes_accessed": bytes_accessed, "collective_bytes": collective_bytes,
        "xla_flops_loop_bodies_once": float(cost.get("flops", 0.0)),
        "unknown_trip_counts": sum(1 for loop in hlo.loops if loop["trip_count"] is None),
        "loops": hlo.loops,
        "collectives": [{"kind": k, **v} for k, v in sorted(hlo.collectives.items())],
        "compile_seconds": round(compile_seconds, 1),
        "roofline_compute_seconds": seconds["compute"], "roofline_memory_seconds": seconds["memory"],
        "roofline_interconnect_seconds": seconds["interconnect"],
        "roofline_seconds": step_s, "bound": bound,
        "mfu_bound": seconds["compute"] / step_s if step_s else 0.0,
        "hbm_traffic_bytes": traffic["whole"],
        "hbm_traffic_split": {k: traffic[k] for k in SPLIT_KEYS},
        "roofline_hbm_traffic_memory_seconds": hbm_seconds["memory"],
        "roofline_hbm_traffic_seconds": hbm_seconds[hbm_bound], "bound_hbm_traffic": hbm_bound,
        "_leading": hlo.leading_sizes,
    }
    if split:
        t0 = time.perf_counter()
        result.update(phase_split(text, flops, bytes_accessed))
        result["split_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def plan(config, topology: str, mesh: Sequence[int] | None = None, *, steps: Sequence[str] = ("train", "eval"),
         activation_constraints: bool = True, runs: int | None = None,
         hlo_dir: str | None = None) -> dict[str, Any]:
    """Compiles ``steps`` of ``config`` for ``topology`` and returns the plan (JSON-ready).

    Args:
      config: an experiment config (it is copied; ``mesh`` overrides its mesh_shape).
      topology: e.g. ``'v5e:2x4'``; the chip must be one of `CHIPS`.
      mesh: ``(data, fsdp, tensor)`` sizes (one may be -1); default: the config's.
      steps: any of ``'train'``, ``'eval'``.
      activation_constraints: pass the logical-axis rules to the train step so
        model-code activation constraints are applied (the trainer's default).
      runs: plan a population of this many runs (seeds ``seed, seed + 1, ...``;
        `jml_jax.runs.with_seeds`); without it, the config's own ``runs``
        fields decide. A population's mesh is ``runs`` slices of ``mesh``
        (each run's own mesh; jml_jax/population.py), and the plan carries
        ``runs``, ``runs_axis``, ``runs_per_device`` and ``chip_seconds_per_run``
        (the roofline step x chips / runs: what one run's training step costs).
      hlo_dir: write each compiled module's HLO text there (train_step.hlo,
        eval_<name>.hlo).

    Raises:
      PlanError when the topology is unknown, the mesh does not cover it, or a
      batch does not divide over the batch axes.
    """
    from jml_jax.mesh import resolve_mesh_shape
    from jml_jax.runs import runs_axis, runs_spec, with_seeds

    unknown = sorted(set(steps) - {"train", "eval"})
    if unknown or not steps:
        raise PlanError(f"steps {list(steps)}: choose from 'train', 'eval'")
    chip = chip_of(topology)
    devices = topology_devices(topology)
    config = config.copy_and_resolve_references()
    if runs:
        config = with_seeds(config, runs)
    try:
        spec = runs_spec(config)
        axis = runs_axis(spec, len(devices)) if spec is not None else 1
    except ValueError as err:
        raise PlanError(f"topology {topology} ({len(devices)} chips): {err}") from None
    shape = tuple(mesh) if mesh is not None else tuple(config.mesh_shape)
    try:
        sizes = resolve_mesh_shape(shape, len(devices) // axis)
    except ValueError as err:
        where = f" (each of the runs axis' {axis} slices)" if axis > 1 else ""
        raise PlanError(f"mesh {shape} does not fit topology {topology} ({len(devices)} chips{where}): "
                        f"{err}") from None
    with config.unlocked():
        config.mesh_shape = sizes
    mesh_sizes = dict(zip(MESH_AXES, sizes))
    shards = mesh_sizes[DATA] * mesh_sizes[FSDP]
    global_batch, eval_batch = int(config.batch_size), int(config.eval_batch_size)
    accum = int(config.optimizer.grad_accum_steps)
    for what, b in (("batch_size", global_batch), ("eval_batch_size", eval_batch)):
        if b % shards:
            raise PlanError(
                f"{what}={b} does not divide over data*fsdp={shards} devices of mesh {mesh_sizes}; "
                f"choose a batch that is a multiple of {shards} or another mesh"
            )
    if global_batch % accum:
        raise PlanError(f"batch_size={global_batch} is not a multiple of grad_accum_steps={accum}")

    try:
        built = _build(config, devices, activation_constraints=activation_constraints)
    except ValueError as err:  # e.g. groups that do not divide over the batch axes
        raise PlanError(f"{topology} mesh {mesh_sizes}: {err}") from err
    params = built.train_args[0].params if spec is None else built.train_args[0].runs.params
    param_leaves = jax.tree.leaves(params)
    runs_count = spec.count if spec is not None else 1
    hidden = params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape[-1] if "bert" in params else None
    watch = [(int(config.data.max_seq_length), int(hidden))] if hidden else []
    result: dict[str, Any] = {
        "topology": topology, "chip": chip.name, "num_devices": len(devices),
        "mesh": mesh_sizes, "dtype": str(config.model.dtype),
        "global_batch": global_batch, "grad_accum_steps": accum,
        "rows_per_device": global_batch // shards,
        "hbm_bytes": chip.hbm_bytes,
        "chip_spec": dataclasses.asdict(chip),
        "activation_constraints": bool(activation_constraints),
        "estimate": "compile-time estimate (XLA cost model + published chip peaks), not a measured time",
        "runs": runs_count, "runs_axis": axis, "runs_per_device": runs_count / axis,
        # Parameters of one run, and what one chip holds of every run's (its shards).
        "parameters": int(sum(math.prod(a.shape) for a in param_leaves) // runs_count),
        "parameters_per_chip": int(sum(math.prod(a.sharding.shard_shape(a.shape)) for a in param_leaves)),
    }
    if "train" in steps:
        compiled, secs = _compile(built.train_step, built.train_args,
                                  pathlib.Path(hlo_dir) / "train_step.hlo" if hlo_dir else None)
        train = analyse(compiled, secs, chip, watch, split=True)
        leading = train.pop("_leading")
        pdb = leading.get(watch[0]) if watch else None
        result.update({
            "per_device_batch": pdb if pdb is not None else int(result["runs_per_device"] * global_batch // shards),
            "argument_bytes": train["argument_bytes"], "output_bytes": train["output_bytes"],
            "temp_bytes": train["temp_bytes"], "total_bytes": train["total_bytes"],
            "fits": train["total_bytes"] <= chip.hbm_bytes,
            "flops_per_step": train["flops"], "bytes_accessed": train["bytes_accessed"],
            "collectives": train["collectives"], "collective_bytes": train["collective_bytes"],
            "bytes_split": train["bytes_split"], "flops_split": train["flops_split"],
            "compile_seconds": train["compile_seconds"],
            "roofline_step_seconds": train["roofline_seconds"], "mfu_bound": train["mfu_bound"],
            "chip_seconds_per_run": train["roofline_seconds"] * len(devices) / result["runs"],
            "hbm_traffic_bytes": train["hbm_traffic_bytes"], "hbm_traffic_split": train["hbm_traffic_split"],
            "roofline_hbm_traffic_step_seconds": train["roofline_hbm_traffic_seconds"],
            "chip_seconds_per_run_hbm_traffic": train["roofline_hbm_traffic_seconds"] * len(devices) / result["runs"],
            "train_flops_per_example": train["flops"] * len(devices) / (global_batch * result["runs"]),
            "train": train,
        })
        if pdb is not None and pdb > result["runs_per_device"] * global_batch // shards:
            result["replicated_work"] = (
                f"each device computes {pdb} examples per step although it holds "
                f"{global_batch // shards} rows: work is replicated over the batch axes"
            )
    if "eval" in steps:
        evals, eval_flops, eval_seconds, eval_hbm_seconds = {}, 0.0, 0.0, 0.0
        for name, (fn, args) in built.eval_fns.items():
            compiled, secs = _compile(fn, args, pathlib.Path(hlo_dir) / f"eval_{name}.hlo" if hlo_dir else None)
            a = analyse(compiled, secs, chip)
            a.pop("_leading")
            a["calls_per_batch"] = built.eval_calls_per_batch[name]
            evals[name] = a
            eval_flops += a["flops"] * a["calls_per_batch"]
            eval_seconds += a["roofline_seconds"] * a["calls_per_batch"]
            eval_hbm_seconds += a["roofline_hbm_traffic_seconds"] * a["calls_per_batch"]
        result.update({
            "eval_batch": eval_batch,
            "eval_flops_per_example": eval_flops * len(devices) / eval_batch,
            "eval_roofline_batch_seconds": eval_seconds,
            "eval_roofline_hbm_traffic_batch_seconds": eval_hbm_seconds,
            "eval_total_bytes": max(e["total_bytes"] for e in evals.values()),
            "eval": evals,
        })
        result["compile_seconds"] = round(result.get("compile_seconds", 0.0)
                                          + sum(e["compile_seconds"] for e in evals.values()), 1)
        result.setdefault("fits", True)
        result["fits"] = result["fits"] and result["eval_total_bytes"] <= chip.hbm_bytes
    return result


def run_estimate(plan_: dict[str, Any], config, *, train_examples: int, eval_examples: Sequence[int]) -> dict[str, Any]:
    """Wall time of a full run at the plan's roofline: train steps plus every evaluation.

    Uses the trainer's own schedule (steps per epoch, eval cadence, eval start);
    host-side decoding, input pipelines and checkpoints are not counted.
    """
    from jml_jax.train import Schedule

    sched = Schedule.from_config(config, train_examples)
    evals = sum(1 for s in range(1, sched.total_steps + 1) if sched.is_eval_step(s))
    batches = sum(math.ceil(n / int(config.eval_batch_size)) for n in eval_examples)

    def seconds(step_s: float, eval_batch_s: float) -> tuple[float, float]:
        # A population trains its runs together and evaluates them one after another.
        return sched.total_steps * step_s, evals * batches * eval_batch_s * plan_.get("runs", 1)

    train_s, eval_s = seconds(plan_["roofline_step_seconds"], plan_.get("eval_roofline_batch_seconds", 0.0))
    out = {
        "train_examples": train_examples, "eval_examples": list(eval_examples),
        "steps_per_epoch": sched.steps_per_epoch, "total_steps": sched.total_steps,
        "evaluations": evals, "eval_batches_per_evaluation": batches,
        "train_seconds": train_s, "eval_seconds": eval_s, "total_seconds": train_s + eval_s,
    }
    if "roofline_hbm_traffic_step_seconds" in plan_ and "eval_roofline_hbm_traffic_batch_seconds" in plan_:
        # The same run at the roofline whose memory term counts HBM-resident traffic only.
        out["total_seconds_hbm_traffic"] = sum(seconds(plan_["roofline_hbm_traffic_step_seconds"],
                                                       plan_["eval_roofline_hbm_traffic_batch_seconds"]))
    return out


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _split_text(p: dict[str, Any]) -> str:
    """'50.5 GB accessed/chip/step (forward 10.1, backward ..., other 0.2)'."""
    text = f"{p['bytes_accessed'] / 1e9:.1f} GB accessed/chip/step"
    split = p.get("bytes_split")
    if split:
        text += " (" + ", ".join(f"{k} {split[k] / 1e9:.1f}" for k in SPLIT_KEYS if k in split) + ")"
    return text


def summary_line(p: dict[str, Any]) -> str:
    """One line for logs: where, how much memory, how fast at the roofline."""
    if "error" in p:
        return f"cannot plan: {p['error']}"
    mesh = "x".join(str(v) for v in p["mesh"].values())
    parts = [f"{p['topology']} mesh {mesh} ({'/'.join(p['mesh'])})"]
    if p.get("runs", 1) > 1:
        parts[0] += (f", {p['runs']} runs on a runs axis of {p['runs_axis']} "
                     f"({p['runs_per_device']:g} per device)")
    if "total_bytes" in p:
        parts.append(f"train {_gib(p['total_bytes'])} of {_gib(p['hbm_bytes'])} per chip "
                     f"({'fits' if p['fits'] else 'does NOT fit'}), per-device batch {p['per_device_batch']}, "
                     f"{p['flops_per_step'] / 1e12:.3f} TFLOP/chip/step, {_split_text(p)}, "
                     f"collectives {p.get('collective_bytes', 0.0) / 2**20:.1f} MiB/chip/step, "
                     f"roofline {p['roofline_step_seconds'] * 1e3:.1f} ms "
                     f"({p['train']['bound']}-bound, MFU bound {p['mfu_bound']:.2f}), "
                     f"{p['chip_seconds_per_run']:.3f} chip-s per run-step")
        if "hbm_traffic_bytes" in p:
            parts.append(f"HBM-resident traffic {p['hbm_traffic_bytes'] / 1e9:.1f} GB/chip/step "
                         f"(roofline {p['roofline_hbm_traffic_step_seconds'] * 1e3:.1f} ms, "
                         f"{p['chip_seconds_per_run_hbm_traffic']:.3f} chip-s per run-step)")
    if "eval_roofline_batch_seconds" in p:
        parts.append(f"eval batch {p['eval_roofline_batch_seconds'] * 1e3:.1f} ms")
    parts.append(f"compiled in {p['compile_seconds']:.0f} s")
    return "; ".join(parts)


def plan_or_error(config, topology: str, mesh: Sequence[int] | None, **kwargs) -> dict[str, Any]:
    """`plan`, or a row that carries the `PlanError` message (for tables)."""
    try:
        return plan(config, topology, mesh, **kwargs)
    except PlanError as err:
        return {"topology": topology, "mesh": dict(zip(MESH_AXES, mesh)) if mesh else None, "error": str(err)}


# ---------------------------------------------------------------------------
# The scale table (docs/scale.md).

# (topology, mesh) rows of the scale table: each slice with its plain
# data-parallel mesh and an FSDP mesh. The paper config has 8 groups
# (grad_accum_steps), and one-pass accumulation puts whole groups on each
# device, so 64 data-parallel devices are refused by name; the v5e-64 rows
# that plan use tensor parallelism for the devices past 8.
TABLE_ROWS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("v5e:2x4", (8, 1, 1)),
    ("v5e:2x4", (1, 8, 1)),
    ("v5p:2x2x1", (4, 1, 1)),
    ("v5p:2x2x1", (1, 4, 1)),
    ("v5e:8x8", (64, 1, 1)),
    ("v5e:8x8", (8, 1, 8)),
)

# Twitter-2015 (the paper's Table 1; data/README): sentences per split.
TWITTER2015 = {"train": 2101, "dev": 727, "test": 674}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _split_gb(split: dict[str, float]) -> str:
    """'(9.5 / 15.1 / 24.4 / 1.0 / 0.5)': a split's parts in GB, in `SPLIT_KEYS` order."""
    return "(" + " / ".join(f"{split[k] / 1e9:.1f}" for k in SPLIT_KEYS) + ")"


def _split_cell(p: dict[str, Any]) -> str:
    split = p.get("bytes_split")
    return f"{p['bytes_accessed'] / 1e9:.1f}" + (f" {_split_gb(split)}" if split else "")


# BERTAdam in float32 (jml_jax/optim.py) reads each parameter, its gradient and
# both moments and writes the parameter and both moments: 7 x 4 bytes; the
# gradient norm of the clipping reads the gradient once more.
UPDATE_FLOOR_BYTES, NORM_BYTES = 7 * 4, 4


def optimizer_floor_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: each row's optimizer-phase HBM-resident bytes per parameter a
    chip holds, against what one fused float32 BERTAdam pass must move."""
    got = [p for p in rows if "error" not in p and p.get("parameters_per_chip") and "hbm_traffic_split" in p]
    if not got:
        return []
    cells = []
    for p in got:
        mesh = ",".join(str(v) for v in p["mesh"].values())
        runs = f", {p['runs']} runs" if p.get("runs", 1) > 1 else ""
        per = p["hbm_traffic_split"]["optimizer"] / p["parameters_per_chip"]
        cells.append(f"{p['topology']} mesh {mesh}{runs}: {per:.1f} B")
    return ["", "The optimizer phase's HBM-resident bytes per parameter a chip holds (one fused float32 "
            f"BERTAdam pass reads parameter, gradient and both moments and writes parameter and moments: "
            f"{UPDATE_FLOOR_BYTES} B; the clipping's gradient norm reads the gradient once more: "
            f"{UPDATE_FLOOR_BYTES + NORM_BYTES} B): " + "; ".join(cells) + "."]


def _hbm_traffic_cell(p: dict[str, Any]) -> str:
    """'18.6 (1.8 / 10.7 / 6.1 / 0.0 / 0.1); 22.7 ms; 0.023', or 'n/a' for an older plan."""
    if "hbm_traffic_bytes" not in p:
        return "n/a"
    return (f"{p['hbm_traffic_bytes'] / 1e9:.1f} {_split_gb(p['hbm_traffic_split'])}; "
            f"{p['roofline_hbm_traffic_step_seconds'] * 1e3:.1f} ms; {p['chip_seconds_per_run_hbm_traffic']:.3f}")


# The paper's grids (tools/paper_table.GRIDS): rows of one dataset x one
# variant, each trained with SEEDS seeds. Tables 3 and 7 share their full rows.
GRID_ROWS = {"Table 3": 2 * 2, "Table 7": 2 * 6, "Tables 3 and 7": 2 * 7}
GRID_SEEDS = 3


def grid_estimates(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines: the wall time of the paper's Table 3 and 7 grids (3 seeds per
    row) on v5e-8 (v5e:2x4), for each way of running them that a planned row of
    that slice gives: one run after another (a single-run plan: each run takes
    its 50-epoch time), or each row's seeds as one population (a plan of
    ``GRID_SEEDS`` runs: each row takes its time, rows one after another)."""
    ways = []
    for p in rows:
        if "error" in p or p.get("topology") != "v5e:2x4" or "run_estimate" not in p:
            continue
        runs, mesh = p.get("runs", 1), ",".join(str(v) for v in p["mesh"].values())
        totals = (p["run_estimate"]["total_seconds"], p["run_estimate"].get("total_seconds_hbm_traffic"))
        if runs == 1:
            ways.append((f"one run at a time, mesh {mesh}", GRID_SEEDS, totals))
        elif runs == GRID_SEEDS:
            ways.append((f"each row's {runs} seeds as one program, each run on mesh {mesh}", 1, totals))
    if not ways:
        return []
    lines = ["", f"The paper's grids on v5e-8 (v5e:2x4), {GRID_SEEDS} seeds per row, rows one after another "
             "(rows differ in architecture, so each is its own program), at the rows' 50-epoch estimates above "
             "(bytes-accessed roofline; HBM-resident roofline where the row has it):", "",
             "| way | " + " | ".join(f"{name} ({n} rows, {n * GRID_SEEDS} runs)" for name, n in GRID_ROWS.items())
             + " |", "|---|" + "---|" * len(GRID_ROWS)]

    def cell(n, per_row, totals):
        text = _hours(n * per_row * totals[0])
        return text + (f" ({_hours(n * per_row * totals[1])})" if totals[1] is not None else "")

    for label, per_row, totals in ways:
        lines.append(f"| {label} | " + " | ".join(cell(n, per_row, totals) for n in GRID_ROWS.values()) + " |")
    return lines


def scale_table(rows: Sequence[dict[str, Any]], config, *, command: str = "") -> str:
    """Markdown for docs/scale.md from plans (`plan` results or error rows)."""
    lines = [
        "# Scale: the paper model on TPU slices, planned at compile time",
        "",
        "Generated by `tools/plan.py` (`python -m launch.plan --table=...`); do not edit by hand.",
        "",
        "**These are compile-time estimates, not measured times.** Each row compiles the real",
        "train step and eval functions of the config for the slice with libtpu's compile-only",
        "client (no TPU attached): per-chip memory is XLA's `memory_analysis()`, FLOPs and bytes",
        "its `cost_analysis()` (loop bodies multiplied by their trip counts), and the step time a",
        "roofline: max(FLOPs / peak bf16 FLOP/s, bytes accessed / HBM bandwidth, collective bytes /",
        "ICI bandwidth) per chip, from the chips' published specifications (`tools.plan.CHIPS`,",
        "sources below): the bound names the largest term. Collective bytes are the results of every",
        "collective of the step (every array of a combined one) over the chip's published per-chip",
        "\"Interchip Interconnect BW\" (the pages' \"bidirectional ICI bandwidth\" is twice it), a",
        "first-order term (no collective algorithm, no link topology). The",
        "max takes compute, HBM traffic and collectives to overlap perfectly; host input and decoding",
        "are not in the roofline, so real steps are slower.",
        "",
        "The bytes accessed split by phase (`tools.plan.phase_split`): each instruction of the compiled",
        "step is classified by the `op_name` JAX traced into it (forward: `jvp(...)`; backward:",
        "`transpose(jvp(...))`; optimizer: everything computed from the gradients outside the",
        "differentiated function, i.e. the optimizer update, `apply_updates`, the finite check and",
        "select, the gradient norm; collectives: every collective instruction; other: the rest) and",
        "each phase costed by XLA's host cost model, scaled by one ratio to the TPU's total, so the",
        "five parts add up to the total. Bytes accessed count every operand and result of every",
        "instruction, those in the chip's on-chip memory included, and the asynchronous copies and slices",
        "by which XLA's memory-space assignment moves arrays between HBM and on-chip memory (layouts",
        "marked `S(1)` in the HLO text, `launch.plan --hlo_dir`), so their memory term is pessimistic.",
        "The HBM-resident column counts only what crosses HBM (`tools.hlo_stats.hbm_traffic`: an",
        "operand or result in on-chip memory costs nothing, a copy or slice between memory spaces counts",
        "once, on its HBM side), split the same way, with the roofline and chip-seconds that memory term",
        "gives: the two columns bracket the memory term. A plan made before this count shows n/a.",
        "`python -m tools.hlo_stats train_step.hlo --phase=optimizer` lists the instructions that move",
        "the most of it in a module written by `launch.plan --hlo_dir`.",
        "",
        "Rows with several runs plan a population (`--runs=R`, jml_jax/population.py): R runs of the",
        "model trained as one program, the mesh's `runs` axis over the chips and each run on its own",
        "mesh (the column's); \"runs (per chip)\" gives R and how many runs each chip works on (a run",
        "spans the chips of its mesh). \"chip-s per run-step\" is the roofline step x chips / R: what one run's",
        "training step costs, the figure to compare between rows. A population's 50-epoch time counts",
        "its R runs' evaluations one after another.",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        "| slice | chips | runs (per chip) | mesh of a run (data,fsdp,tensor) | per-device batch | train memory / chip | fits | "
        "eval memory / chip | TFLOP / chip / step | GB accessed / chip / step (forward / backward / optimizer / "
        "collectives / other) | collective MiB / chip / step | roofline step | bound | chip-s per run-step | "
        "HBM-resident GB / chip / step (same split); its roofline; chip-s per run-step | "
        "50-epoch run (train + evals) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    old_rows = False
    for p in rows:
        mesh = ",".join(str(v) for v in (p.get("mesh") or {}).values()) or "config"
        if "error" in p:
            lines.append(f"| {p['topology']} | | {p.get('runs', 1)} | {mesh} | refused: see note | | | | | | | | | | | |")
            notes.append(f"- {p['topology']} mesh {mesh}: {p['error']}")
            continue
        stale = "" if "bytes_split" in p else " (*)"
        if stale:
            old_rows = True
        run = run_estimate(p, config, train_examples=TWITTER2015["train"],
                           eval_examples=(TWITTER2015["dev"], TWITTER2015["test"]))
        p["run_estimate"] = run
        runs = p.get("runs", 1)
        chip_s = p.get("chip_seconds_per_run", p["roofline_step_seconds"] * p["num_devices"] / runs)
        lines.append(
            f"| {p['topology']} | {p['num_devices']} | {runs} ({p.get('runs_per_device', 1):g}) | "
            f"{mesh} | {p['per_device_batch']} | "
            f"{_gib(p['total_bytes'])} | {'yes' if p['fits'] else 'NO'} | "
            f"{_gib(p['eval_total_bytes']) if 'eval_total_bytes' in p else 'n/a'} | "
            f"{p['flops_per_step'] / 1e12:.3f} | {_split_cell(p)} | "
            f"{_mib(p['collective_bytes']) if 'collective_bytes' in p else 'n/a'} | "
            f"{p['roofline_step_seconds'] * 1e3:.1f} ms | {p['train']['bound']}{stale} | {chip_s:.3f} | "
            f"{_hbm_traffic_cell(p)} | "
            f"{_hours(run['total_seconds'])} ({_hours(run['train_seconds'])} + {_hours(run['eval_seconds'])})"
            + (f"; HBM-resident {_hours(run['total_seconds_hbm_traffic'])}" if "total_seconds_hbm_traffic" in run
               else "") + " |"
        )
    first = next((p for p in rows if "error" not in p), None)
    if first is not None and "run_estimate" in first:
        r = first["run_estimate"]
        lines += [
            "",
            f"The run: Twitter-2015, {r['train_examples']} training sentences, batch "
            f"{first['global_batch']} -> {r['steps_per_epoch']} steps per epoch, {r['total_steps']} steps in "
            f"{config.num_epochs} epochs; {r['evaluations']} evaluations ({config.eval_per_epoch} per epoch after the "
            f"first {config.eval_start_fraction:.0%} of steps), each {r['eval_batches_per_evaluation']} batches of "
            f"{first.get('eval_batch', '?')} over dev ({TWITTER2015['dev']}) and test ({TWITTER2015['test']}), "
            "one extraction (which classifies the gold spans too) and one classification of the decoded "
            "spans per batch (host decoding not counted).",
        ]
    lines += optimizer_floor_lines(rows)
    lines += grid_estimates(rows)
    if old_rows:
        lines += ["", "(*) Planned before the bytes split and the interconnect term (its JSON not regenerated "
                  "yet): its roofline is max(compute, HBM) only, and it has no split or collective bytes "
                  "(its JSON counted a combined collective at its largest array)."]
    if notes:
        lines += ["", "Refused plans:", ""] + notes
    lines += ["", "Chips (published per-chip figures used by the roofline):", "",
              "| chip | peak bf16 FLOP/s | HBM | HBM bandwidth | Interchip Interconnect BW | source |",
              "|---|---|---|---|---|---|"]
    for chip in CHIPS.values():
        ici_src = f"; ICI: {chip.ici_source}" if chip.ici_source and chip.ici_source != chip.source else ""
        lines.append(f"| {chip.name} | {chip.peak_bf16_flops_per_s / 1e12:.0f} T | {_gib(chip.hbm_bytes)} | "
                     f"{chip.hbm_bytes_per_s / 1e9:.0f} GB/s | {chip.ici_bytes_per_s * 8 / 1e9:.0f} Gbps "
                     f"({chip.ici_bytes_per_s / 1e9:.0f} GB/s) | {chip.source}{ici_src} |")
    lines.append("")
    return "\n".join(lines)


def constraint_comparison(with_: dict[str, Any], without: dict[str, Any]) -> str:
    """Markdown: the same train step planned with and without activation constraints."""
    mesh = ",".join(str(v) for v in with_["mesh"].values())
    lines = [
        f"Train step of `{with_.get('config', 'the config')}` on {with_['topology']}, mesh {mesh} "
        "(data,fsdp,tensor), with and without the activation constraints in BERT "
        "(`jml_jax/models/bert.py`: hidden states on the batch axes, q/k/v and FFN width on `tensor`):",
        "",
        "| constraints | train memory / chip | temp / chip | TFLOP / chip / step | roofline step | collectives (kind: count, MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in (("with", with_), ("without", without)):
        coll = "; ".join(f"{c['kind']}: {c['count']}, {c['bytes'] / 2**20:.1f}" for c in p["collectives"])
        lines.append(f"| {name} | {_gib(p['total_bytes'])} | {_gib(p['temp_bytes'])} | "
                     f"{p['flops_per_step'] / 1e12:.3f} | {p['roofline_step_seconds'] * 1e3:.1f} ms | {coll} |")
    return "\n".join(lines) + "\n"
