"""Many runs of one architecture in one program: `build_population`, `train_population`.

A paper result is a mean over seeds, and one run of the faithful batch of 32
cannot use more than 8 chips; the fixed cost of its weights and optimizer
state is paid by every chip that holds a replica. A population trains R runs
(jml_jax/runs.py: ``runs.seeds`` and the per-run fields) as one program:

* the state is one run's `TrainState` with a leading ``[R]`` dimension on
  every leaf, plus ``alive`` (bool ``[R]``); the mesh gains a leading
  ``runs`` axis (`jml_jax.mesh.make_mesh(..., runs=K)`) whose K slices each
  hold R / K runs, and within a slice each run is placed exactly as a single
  run on a mesh of ``mesh_shape`` (the single run's shardings with ``runs``
  prepended on the leading dimension);
* the step is the single run's un-jitted step (`jml_jax.steps.train_step_body`)
  mapped over the runs (``jax.vmap(..., spmd_axis_name='runs')``): runs on one
  slice share its devices by the map, runs on different slices never talk to
  each other (no collective crosses the runs axis);
* run r's arithmetic is that of its run alone: its own initialisation
  (``PRNGKey(seed)``, pretrained pieces shared), dropout (``fold_in(rng, step)``
  of its own key), batches (its seed's data order), per-group BatchNorm and loss
  normalisation, optimizer and schedule (its learning rate, warmup and weight
  decay enter `optim.make_optimizer` as traced scalars), and finite check: a
  run whose loss or gradients go non-finite keeps its last good state, is
  stopped (``alive`` False, on the device, so no later step moves it) and
  reported naming the step, while the others go on;
* afterwards each run is an ordinary run in ``<workdir>/runs/seed_<seed>/``
  (config.json of `jml_jax.runs.run_config`, metrics.jsonl, tensorboard/,
  data_counts.json, best/, summary.json) that `launch.evaluate`,
  `launch.predict`, `tools.report` and `tools.significance` read as any
  other; ``<workdir>/checkpoints`` holds the whole population, so the same
  command resumes every run bit-identically; ``<workdir>/summary.json`` lists
  the runs' summaries.

Evaluation scores one run after another with the single run's evaluator on a
mesh of every device (the runs axis folded into ``data``; each run's state is
moved there for its turn), so every chip shares each evaluation. One process
only: a population's batches are built whole on the host.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import shutil
import time
from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jml_jax import contract, optim, weights
from jml_jax.axes import DATA, FSDP, MESH_AXES, RUNS
from jml_jax.checkpointing import BestModel, Checkpointer
from jml_jax.decode import NaNLogitsError
from jml_jax.evaluators import EvalSplit, decode_config_from, validate_eval_setup
from jml_jax.experiment import Experiment, build_experiment
from jml_jax.mesh import describe_mesh, make_mesh
from jml_jax.preemption import Preempted, PreemptionWatch, clear_preempted, mark_preempted
from jml_jax.progress import Progress
from jml_jax.relation_cache import FINGERPRINT_FILE
from jml_jax.runs import RunsSpec, run_config, runs_axis, runs_spec
from jml_jax.scoring import score_splits
from jml_jax.summary import MetricWriter
from jml_jax.train import (NonFiniteLossError, Schedule, TrainData, _data_counts, _eval_line,
                           _select_key, _write_data_counts)
from jml_jax.train_state import TrainState, state_init_fn, all_finite, raw_key
from jml_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)

RUNS_DIR = "runs"


@flax.struct.dataclass
class PopulationState:
    """``runs``: a `TrainState` whose every leaf has a leading ``[R]``;
    ``alive``: bool ``[R]``, False once a run stopped."""

    runs: TrainState
    alive: jax.Array


def _stacked(sharding: NamedSharding) -> NamedSharding:
    """A single run's sharding with the ``runs`` axis on a new leading dimension."""
    return NamedSharding(sharding.mesh, PartitionSpec(RUNS, *sharding.spec))


@dataclasses.dataclass
class Population:
    """The built pieces of a population: its runs, one run's experiment on the
    population's mesh, the stacked shardings and the per-run hyperparameters."""

    spec: RunsSpec
    configs: list  # run_config of each run
    exp: Experiment  # one run (shardings replicated over the runs axis)
    # One run on a mesh of every device (the runs axis folded into 'data'):
    # what evaluates, keeps the best model and exports, one run at a time.
    eval_exp: Experiment
    shardings: PopulationState  # of NamedSharding
    abstract_state: PopulationState  # of ShapeDtypeStruct with shardings
    hyper: dict[str, np.ndarray]  # make_optimizer overrides, one value per run
    t_total: int

    @property
    def mesh(self):
        return self.exp.mesh

    @property
    def count(self) -> int:
        return self.spec.count

    @property
    def batch_sharding(self) -> NamedSharding:
        """``[R, B, ...]``: runs on the runs axis, rows on the batch axes."""
        return NamedSharding(self.mesh, PartitionSpec(RUNS, (DATA, FSDP)))

    @property
    def runs_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(RUNS))

    def inputs(self, *, train: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
        """A population batch's inputs: each run's ``[B, ...]`` behind ``[R]``, placed."""
        one = self.exp.inputs(train=train)
        return {k: jax.ShapeDtypeStruct((self.count,) + v.shape, v.dtype, sharding=self.batch_sharding)
                for k, v in one.items()}

    def initial_state(self, pieces=None) -> PopulationState:
        """Every run's step-0 state: the pretrained ``pieces`` (shared, read once)
        and each run's own random init from ``PRNGKey(seed)``, built on the devices."""
        exp = self.exp
        if pieces is None:
            pieces = exp.task.pretrained_pieces(exp.abstract_variables)
        given = weights.placed_pieces(pieces, exp.abstract_state) if pieces else None
        init_one = state_init_fn(exp.task.init_fn, exp.tx)
        keys = jnp.stack([raw_key(jax.random.PRNGKey(int(s))) for s in self.spec.seeds])

        def init(keys, given):
            runs = jax.vmap(init_one, in_axes=(0, None))(keys, given)
            return PopulationState(runs=runs, alive=jnp.ones((self.count,), bool))

        return jax.jit(init, out_shardings=self.shardings)(keys, given)

    def make_train_step(self, *, donate: bool = True):
        """Jitted ``step(population, batch) -> (population, metrics)``: every
        run's step of `jml_jax.steps.train_step_body` with its own optimizer;
        ``metrics`` are the single step's, each ``[R]`` (on the runs axis)."""
        body = self.exp.train_step_body()
        make_tx = self.exp.make_tx
        hyper = {k: np.asarray(v) for k, v in self.hyper.items()}

        def one(state, batch, h, alive):
            return body(state, batch, make_tx(h), accept=alive)

        def step(pop: PopulationState, batch):
            runs, metrics = jax.vmap(one, spmd_axis_name=RUNS)(pop.runs, batch, hyper, pop.alive)
            return PopulationState(runs=runs, alive=pop.alive & metrics["is_finite"]), metrics

        return jax.jit(step, in_shardings=(self.shardings, self.batch_sharding),
                       out_shardings=(self.shardings, self.runs_sharding),
                       donate_argnums=(0,) if donate else ())

    def run_state_fn(self):
        """``(population, r) -> run r's TrainState`` on `eval_exp`'s mesh (every
        device): what its evaluation, best model and exports read."""
        # eval_exp's mesh is the population's devices in the same order, so the
        # jitted take can lay run r out there directly (one move, not two).
        return jax.jit(lambda pop, r: jax.tree.map(lambda x: x[r], pop.runs),
                       in_shardings=(self.shardings, None), out_shardings=self.eval_exp.shardings)

    def finite_fn(self):
        """Jitted ``population -> bool [R]``: every float of the run's params and
        batch statistics is finite."""
        return jax.jit(lambda pop: jax.vmap(all_finite)((pop.runs.params, pop.runs.batch_stats)),
                       in_shardings=(self.shardings,), out_shardings=self.runs_sharding)

    def global_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """A host batch ``[R * B, ...]`` (the runs' batches one after another) ->
        global ``[R, B, ...]`` arrays placed by `batch_sharding`."""
        out = {}
        for k, v in batch.items():
            arr = np.asarray(v)
            if arr.shape[0] % self.count:
                raise ValueError(f"population batch[{k!r}] has {arr.shape[0]} rows, not {self.count} runs' batches")
            arr = arr.reshape((self.count, arr.shape[0] // self.count) + arr.shape[1:])
            out[k] = jax.make_array_from_callback(arr.shape, self.batch_sharding, lambda idx, a=arr: a[idx])
        return out


def build_population(config, spec: RunsSpec | None = None, *, devices=None, num_train_steps: int | None = None,
                     steps_per_epoch: int | None = None) -> Population:
    """Mesh (with its runs axis), one run's experiment, the stacked state's
    shapes and shardings, and the runs' hyperparameters; nothing is computed.

    Raises:
      ValueError naming the field for a config that is not a population, a
      runs axis that does not divide the devices or the runs, or per-run
      values the optimizer cannot take.
    """
    spec = spec or runs_spec(config)
    if spec is None:
        raise ValueError("config.runs.seeds is empty: not a population (train it as a single run)")
    devices = list(jax.devices() if devices is None else devices)
    mesh = make_mesh(tuple(config.mesh_shape), devices=devices, runs=runs_axis(spec, len(devices)))
    exp = build_experiment(config, mesh=mesh, num_train_steps=num_train_steps, steps_per_epoch=steps_per_epoch)
    # Evaluation uses every device for one run at a time: the runs axis folded
    # into 'data' (same devices, same order), so no slice evaluates a copy.
    runs_size, data, fsdp, tensor = mesh.devices.shape
    eval_mesh = Mesh(mesh.devices.reshape(runs_size * data, fsdp, tensor), MESH_AXES,
                     axis_types=(AxisType.Auto,) * len(MESH_AXES))
    eval_exp = build_experiment(config, mesh=eval_mesh, num_train_steps=num_train_steps,
                                steps_per_epoch=steps_per_epoch)
    t_total = max(1, num_train_steps or 1)
    configs = [run_config(config, spec, r) for r in range(spec.count)]
    hyper = _hyperparameters(configs, t_total)
    stack = lambda s: _stacked(s)  # noqa: E731
    shardings = PopulationState(runs=jax.tree.map(stack, exp.shardings), alive=NamedSharding(mesh, PartitionSpec(RUNS)))
    abstract = PopulationState(
        runs=jax.tree.map(lambda a, s: jax.ShapeDtypeStruct((spec.count,) + a.shape, a.dtype, sharding=s),
                          exp.abstract_state, shardings.runs),
        alive=jax.ShapeDtypeStruct((spec.count,), jnp.bool_, sharding=shardings.alive),
    )
    return Population(spec, configs, exp, eval_exp, shardings, abstract, hyper, t_total)


def _hyperparameters(configs, t_total: int) -> dict[str, np.ndarray]:
    """`optim.make_optimizer` overrides per run: learning rate, warmup, its
    switch step (computed here in float64, as for a single run) and weight decay."""
    opt = [c.optimizer for c in configs]
    hyper = {
        "learning_rate": np.asarray([o.learning_rate for o in opt], np.float32),
        "warmup_proportion": np.asarray([o.get("warmup_proportion", 0.1) for o in opt], np.float32),
        "weight_decay": np.asarray([o.get("weight_decay", 0.0) or 0.0 for o in opt], np.float32),
    }
    if configs[0].optimizer.get("schedule", "warmup_linear") == "warmup_linear":
        hyper["warmup_switch"] = np.asarray(
            [optim.first_step_past_warmup(t_total, float(o.get("warmup_proportion", 0.1))) for o in opt], np.int32)
    return hyper


# ---------------------------------------------------------------------------
# Training.


def _combined(train_datas: Sequence[TrainData]) -> TrainData:
    """The runs' streams as one: each batch is the runs' batches one after another."""
    n = {d.num_examples for d in train_datas}
    if len(n) != 1:
        raise ValueError(f"the runs' training sets differ in size ({sorted(n)}): a population shares its data")

    def make_iter(start_step):
        iters = [d.make_iter(start_step) for d in train_datas]

        def gen():
            try:
                while True:
                    parts = [next(it) for it in iters]
                    yield {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
            finally:
                for it in iters:
                    if hasattr(it, "close"):
                        it.close()

        return gen()

    return TrainData(make_iter=make_iter, num_examples=n.pop(), data_counts=train_datas[0].data_counts)


class _Run:
    """One run's host side: its folder, writer, best model and records."""

    def __init__(self, workdir: pathlib.Path, name: str, config, meta: Mapping[str, Any] | None):
        self.name, self.config = name, config
        self.dir = workdir / RUNS_DIR / name
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = meta or {}
        self.best = meta.get("best", {"step": None, "value": -math.inf, "scores": {}})
        self.last = meta.get("last", {"step": None, "scores": {}})
        self.stopped = meta.get("stopped")
        self.writer = MetricWriter(self.dir)
        self.best_model = BestModel(self.dir)
        self.exported: dict[str, Any] = dict(meta.get("exported", {}))

    def record(self) -> dict:
        return {"best": self.best, "last": self.last, "stopped": self.stopped, "exported": self.exported}

    def stop(self, step: int, reason: str) -> None:
        self.stopped = {"step": int(step), "reason": reason}
        log.warning("run %s stopped at step %d: %s; the other runs go on", self.name, step, reason)

    def close(self) -> None:
        self.best_model.wait()
        self.best_model.close()
        self.writer.close()


def train_population(config, workdir: str | pathlib.Path, train_datas: Sequence[TrainData],
                     eval_splits: Mapping[str, EvalSplit], *, devices=None, allow_fresh_start: bool = False,
                     preemption: PreemptionWatch | None = None) -> dict:
    """Trains the config's runs together (``train_datas[r]``: run r's stream, of
    its seed); returns ``{'runs': {name: summary}, ...}`` (also
    ``workdir/summary.json``), each summary as `jml_jax.train.train_and_evaluate`
    writes it except that ``train_seconds`` is the run's share (the program's
    time / R), plus ``population`` ({workdir, runs, train_seconds}) and
    ``stopped`` ({step, reason}) for a run that went non-finite.

    Raises `WorkdirLockedError` when another live run holds ``workdir``,
    `Preempted` after saving the current step on SIGTERM/SIGINT, and
    `NonFiniteLossError` when every run has stopped.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir), (preemption or PreemptionWatch()) as preemption:
        return _train_population(config, workdir, train_datas, eval_splits, devices=devices,
                                 allow_fresh_start=allow_fresh_start, preemption=preemption)


def _train_population(config, workdir: pathlib.Path, train_datas, eval_splits, *, devices, allow_fresh_start,
                      preemption) -> dict:
    spec = runs_spec(config)
    if spec is None:
        raise ValueError("config.runs.seeds is empty: train a single run with jml_jax.train.train_and_evaluate")
    if len(train_datas) != spec.count:
        raise ValueError(f"{len(train_datas)} training streams for {spec.count} runs")
    if jax.process_count() > 1:
        raise ValueError("a population trains in one process (its batches are built whole on the host); "
                         "run it on one host, or its runs as separate jobs")
    schedule = Schedule.from_config(config, train_datas[0].num_examples)
    pop = build_population(config, spec, devices=devices, num_train_steps=schedule.t_total,
                           steps_per_epoch=schedule.steps_per_epoch)
    exp, task = pop.exp, pop.exp.task
    select = _select_key(config)
    validate_eval_setup(config, task, eval_splits, pop.eval_exp.mesh)
    log.info("%s task; %d runs (%s); mesh %s; %d steps (%d per epoch), eval every %d after step %d", task.name,
             spec.count, ", ".join(spec.names), describe_mesh(exp.mesh), schedule.total_steps,
             schedule.steps_per_epoch, schedule.eval_every, schedule.eval_start)
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    finite = pop.finite_fn()
    clear_preempted(workdir)
    restored = ckpt.restore_or_none(
        pop.abstract_state, allow_fresh_start=allow_fresh_start,
        check=lambda st: bool(np.all(np.asarray(finite(st)) | ~np.asarray(st.alive))))
    earlier_seconds, pretrained_inputs = 0.0, None
    if restored is not None:
        state, meta = restored
        earlier_seconds = float(meta.get("train_seconds", 0.0))
        records = meta.get("runs", {})
        log.info("resumed %d runs from step %d in %s", spec.count, int(meta["step"]), workdir)
    else:
        pieces, pretrained_inputs = task.pretrained(exp.abstract_variables)
        state = pop.initial_state(pieces)
        records = {}
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    runs = [_Run(workdir, spec.name(r), pop.configs[r], records.get(spec.name(r))) for r in range(spec.count)]
    for run, data in zip(runs, train_datas):
        if restored is None and jax.process_index() == 0:
            (run.dir / "config.json").write_text(run.config.to_json_best_effort(indent=2) + "\n")
        _write_data_counts(run.dir, data, eval_splits)
    train_data, eval_splits = task.prepare_inputs(exp, _combined(train_datas), eval_splits, workdir=workdir,
                                                  pretrained_inputs=pretrained_inputs)
    del pretrained_inputs
    _share_records(workdir, runs)
    train_step = pop.make_train_step()
    run_state = pop.run_state_fn()
    evaluator = pop.eval_exp.make_evaluator()
    decodes = [decode_config_from(c) if "decode_threshold" in spec.values else None for c in pop.configs]
    inputs = exp.task.inputs(spec.count * int(config.batch_size), train=True)
    pending: list[tuple[int, Any]] = []
    step_of_state = int(meta["step"]) if restored is not None else 0

    def alive_runs():
        return [r for r, run in enumerate(runs) if run.stopped is None]

    def raise_if_all_stopped():
        if not alive_runs():
            raise NonFiniteLossError("every run of the population stopped: " + "; ".join(
                f"{run.name} at step {run.stopped['step']} ({run.stopped['reason']})" for run in runs))

    def flush():
        nonlocal pending
        items, pending = pending, []
        if not items:
            return
        host = jax.device_get([m for _, m in items])
        for (step, _), metrics in zip(items, host):
            for r in alive_runs():
                if not bool(metrics["is_finite"][r]):
                    runs[r].stop(step, f"non-finite loss or gradient at step {step}; the update was not "
                                       "applied and its last good state is kept")
                    continue
                if step % config.log_every_steps == 0 or step == schedule.total_steps:
                    runs[r].writer.write_scalars(
                        step, {f"train/{k}": float(np.asarray(v)[r]) for k, v in metrics.items()})
        raise_if_all_stopped()
        last = host[-1]
        progress.update(items[-1][0], loss=float(np.mean([np.asarray(last["loss"])[r] for r in alive_runs()])))

    def check_finite(step):
        nonlocal state
        ok = np.asarray(finite(state))
        bad = [r for r in alive_runs() if not ok[r]]
        for r in bad:
            runs[r].stop(step, f"the parameters are not finite after step {step} although its loss and "
                               "gradients were (an optimizer setting such as the learning rate?)")
        if bad:
            state = state.replace(alive=jax.device_put(np.array([run.stopped is None for run in runs]),
                                                       pop.shardings.alive))
            raise_if_all_stopped()

    def save(step, **kwargs):
        check_finite(step)
        ckpt.save(step, state, metadata={"runs": {run.name: run.record() for run in runs},
                                         "train_seconds": earlier_seconds + time.time() - t0}, **kwargs)

    start = step_of_state
    batches = train_data.make_iter(start)
    progress = Progress(schedule.total_steps, start=start, unit_examples=config.batch_size * spec.count)
    t0 = time.time()
    try:
        for step in range(start + 1, schedule.total_steps + 1):
            batch = contract.take(next(batches), inputs, f"the {task.name} task's training step")
            state, metrics = train_step(state, pop.global_batch(batch))
            pending.append((step, metrics))
            progress.update(step)
            is_eval = schedule.is_eval_step(step)
            if is_eval or step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0:
                flush()
            if is_eval:
                check_finite(step)
                for r in alive_runs():
                    run = runs[r]
                    one = run_state(state, np.int32(r))
                    try:
                        scores = score_splits(evaluator, one, eval_splits, decode=decodes[r])
                    except NaNLogitsError as err:  # finite but diverged weights: this run stops
                        run.stop(step, f"its evaluation at step {step} gave NaN logits ({err})")
                        state = state.replace(alive=jax.device_put(
                            np.array([x.stopped is None for x in runs]), pop.shardings.alive))
                        continue
                    run.writer.write_scalars(step, {**scores, "epoch": step / schedule.steps_per_epoch})
                    run.last = {"step": step, "scores": scores}
                    if select is not None and scores[select] > run.best["value"]:
                        run.best = {"step": step, "value": scores[select], "scores": scores}
                        run.best_model.save_best(step, {"params": one.params, "batch_stats": one.batch_stats},
                                                 scores)
                        run.exported.update(task.export(run.dir, one, event="best"))
                    progress.note(f"{run.name}: " + _eval_line(step, schedule, scores, select, run.best))
                raise_if_all_stopped()
            if step % config.checkpoint_every_steps == 0:
                save(step)
            if preemption.should_stop(step):
                flush()
                if ckpt.latest_step() != step:
                    save(step, force=True)
                ckpt.wait()
                mark_preempted(workdir, step, preemption.signal_name)
                log.warning("%s: saved step %d of %d of %d runs in %s; rerun the same command to resume",
                            preemption.signal_name or "preemption notice", step, schedule.total_steps,
                            spec.count, workdir / "checkpoints")
                raise Preempted(step, preemption.signal_name, workdir)
        flush()
        final_step = max(start, schedule.total_steps)
        if ckpt.latest_step() != final_step:
            save(final_step, force=True)
        for r in alive_runs():
            runs[r].exported.update(task.export(runs[r].dir, run_state(state, np.int32(r)), event="end"))
    finally:
        progress.close()
        ckpt.wait()
        ckpt.close()
        for run in runs:
            run.close()
        if hasattr(batches, "close"):
            batches.close()
    seconds = round(earlier_seconds + time.time() - t0, 1)
    steps = np.asarray(jax.device_get(state.runs.step))
    summaries = {}
    for r, run in enumerate(runs):
        summary = {
            "task": task.name, "select": select, "best_step": run.best["step"],
            "best_value": run.best["value"] if run.best["step"] is not None else None,
            "best_scores": run.best["scores"], "final_step": int(steps[r]), "final_scores": run.last["scores"],
            "total_steps": schedule.total_steps, "steps_per_epoch": schedule.steps_per_epoch,
            # This run's share of the program's time, so per-run times and their sums stay true.
            "train_seconds": round(seconds / spec.count, 1), **run.exported,
            "data_counts": _data_counts(train_datas[r], eval_splits),
            "population": {"workdir": str(workdir), "runs": spec.count, "train_seconds": seconds},
        }
        if run.stopped is not None:
            summary["stopped"] = run.stopped
        summaries[run.name] = summary
        if jax.process_index() == 0:
            (run.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    population = {"runs": summaries, "seeds": list(spec.seeds), "mesh": describe_mesh(exp.mesh),
                  "train_seconds": seconds}
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(population, indent=2) + "\n")
    return population


def _share_records(workdir: pathlib.Path, runs: Sequence[_Run]) -> None:
    """Records of the population's folder that are every run's: the relation
    cache's record of its module (which `launch.evaluate` checks as any run's)
    and the commands that trained it (command.txt, read by `tools.report`)."""
    if jax.process_index() != 0:
        return
    for name in (FINGERPRINT_FILE, "command.txt"):
        if (workdir / name).exists():
            for run in runs:
                shutil.copyfile(workdir / name, run.dir / name)


def is_population(config) -> bool:
    """Whether ``config`` trains several runs together (``runs.seeds`` set)."""
    return runs_spec(config) is not None
