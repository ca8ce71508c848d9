"""From a config to everything a run needs before step 1, built once and in one place.

    exp = build_experiment(config, num_train_steps=..., steps_per_epoch=...)
    state = exp.restore(...) or exp.initial_state()   # pretrained pieces placed
    train_step = exp.make_train_step()
    evaluator = exp.make_evaluator()

The mesh comes from ``config.mesh_shape`` over ``devices``; the logical-axis
rules from ``config.axis_rules``; the model, its init and its loss from the
task (jml_jax/tasks.py); the optimizer from ``config.optimizer`` with the
task's frozen parts; the abstract state and its shardings from one trace of
the model's init (`jml_jax.train_state.abstract_sharded_state`); the batches'
shapes from the task's inputs (``exp.inputs(train=...)``, jml_jax/contract.py).
Training, evaluation, prediction, the benchmarks and the planner all build
through here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax

from jml_jax import optim, weights
from jml_jax.mesh import make_mesh
from jml_jax.sharding import batch_sharding, normalize_rules
from jml_jax.steps import make_train_step, train_step_body
from jml_jax.tasks import get_task
from jml_jax.train_state import abstract_sharded_state, create_sharded_state


@dataclasses.dataclass
class Experiment:
    """The built pieces of one config on one mesh."""

    config: Any
    task: Any
    mesh: Any
    rules: Any
    tx: Any
    abstract_state: Any  # TrainState of ShapeDtypeStruct with shardings (a restore target)
    shardings: Any  # TrainState of NamedSharding
    # overrides -> the optimizer with a run's own hyperparameters
    # (`optim.make_optimizer`'s overrides; jml_jax/population.py)
    make_tx: Callable[[Any], Any] = None

    @property
    def model(self):
        return self.task.model

    @property
    def abstract_variables(self) -> dict:
        """``{'params', 'batch_stats'}`` of ShapeDtypeStructs (the model's own shapes)."""
        return {"params": self.abstract_state.params, "batch_stats": self.abstract_state.batch_stats}

    def random_state(self, given=None):
        """A freshly initialised sharded state (jitted init: each device builds
        its own shards); ``given`` values replace random ones (`initial_state`)."""
        state, _ = create_sharded_state(self.task.init_fn, self.tx, self.mesh, self.rules,
                                        jax.random.PRNGKey(int(self.config.seed)), shardings=self.shardings,
                                        given=given)
        return state

    def initial_state(self, pieces=None):
        """The state of step 0: every configured pretrained piece, random init for the rest.

        ``pieces``: the task's pretrained pieces when the caller read them
        (``task.pretrained``, whose second value feeds ``task.prepare_inputs``);
        default: read here. They are read (and strictly checked) before the
        init is compiled, so a wrong path fails fast; they enter the jitted
        init, so nothing random is computed for them and then thrown away.
        """
        if pieces is None:
            pieces = self.task.pretrained_pieces(self.abstract_variables)
        return self.random_state(weights.placed_pieces(pieces, self.abstract_state) if pieces else None)

    def inputs(self, *, train: bool):
        """The task's model inputs at the config's global batch size (train or
        eval), as ShapeDtypeStructs (jml_jax/contract.py)."""
        size = self.config.batch_size if train else self.config.eval_batch_size
        return self.task.inputs(int(size), train=train)

    def make_train_step(self, *, donate: bool = True):
        return make_train_step(self.task.loss_fn, self.tx, self.shardings, batch_sharding(self.mesh),
                               donate=donate, **self._step_options())

    def train_step_body(self):
        """The un-jitted ``step(state, batch, tx, accept=None)`` (`jml_jax.steps.train_step_body`)."""
        return train_step_body(self.task.loss_fn, self.shardings, batch_sharding(self.mesh),
                               **self._step_options())

    def _step_options(self) -> dict:
        opt = self.config.optimizer
        return dict(grad_accum_steps=int(opt.get("grad_accum_steps", 1)), rules=self.rules,
                    accumulation=opt.get("accumulation", "one_pass"), batch_size=int(self.config.batch_size))

    def make_evaluator(self):
        return self.task.make_evaluator(self.mesh, self.shardings, self.rules)


def build_experiment(config, *, devices=None, num_train_steps: int | None = None,
                     steps_per_epoch: int | None = None, mesh=None) -> Experiment:
    """Mesh, task (model, loss), optimizer, abstract state and shardings; nothing is computed.

    Args:
      devices: the devices the mesh covers (default: all of them); e.g.
        ``jax.devices()[:1]`` with ``config.mesh_shape=(1, 1, 1)`` evaluates a
        checkpoint written on many devices on one, or a TPU topology's devices
        for compile-only planning.
      num_train_steps: the learning-rate schedule's length t_total (optimizer
        updates); evaluation and prediction pass None (never used then).
      steps_per_epoch: for per-epoch schedules (the relation stage's LambdaLR).
      mesh: a mesh built already (a population's, with its ``runs`` axis:
        the state and steps here are then one run's, replicated over it);
        default: ``config.mesh_shape`` over ``devices``.
    """
    if mesh is None:
        mesh = make_mesh(tuple(config.mesh_shape), devices=devices)
    rules = normalize_rules(config.axis_rules, mesh)
    task = get_task(config)
    opt_cfg = dict(config.optimizer.to_dict())
    for field in ("grad_accum_steps", "accumulation", "t_total"):
        opt_cfg.pop(field, None)  # read by the train step, not the optimizer
    opt_cfg["frozen_prefixes"] = task.frozen_prefixes
    if opt_cfg.get("schedule") == "relation_epoch_decay":
        opt_cfg["steps_per_epoch"] = steps_per_epoch or 1
    boxed = jax.eval_shape(task.init_fn, jax.random.PRNGKey(0))  # the one trace of the model's init
    abstract_params = nn.meta.unbox(boxed["params"])
    t_total = max(1, num_train_steps or 1)
    tx = optim.make_optimizer(opt_cfg, abstract_params, t_total)
    abstract_state, shardings = abstract_sharded_state(task.init_fn, tx, mesh, rules, boxed_variables=boxed)

    def make_tx(overrides):
        return optim.make_optimizer(opt_cfg, abstract_params, t_total, overrides=overrides)

    return Experiment(config, task, mesh, rules, tx, abstract_state, shardings, make_tx)
