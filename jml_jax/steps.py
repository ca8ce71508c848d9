"""Model-agnostic jitted train and eval steps.

The model enters only through a loss function (training) or a forward function
(evaluation); the step handles randomness, gradient accumulation, the optimizer
update, non-finite protection, and placement (``jax.jit`` with
``in_shardings``/``out_shardings`` and donation of the old state).

Gradient accumulation keeps the original's arithmetic (§5.3, §5.4): an
effective batch of G x m sentences is G mini-batches of m, each with its own
loss normalisation and its own BatchNorm batch statistics, the running
statistics updated mini-batch after mini-batch, and the G losses averaged. Two
ways to run it:

* ``accumulation="one_pass"`` (the default): one forward/backward over the
  whole [G*m] batch, with the loss function told ``groups=G``; group g is the
  contiguous rows g*m .. (g+1)*m - 1, and the model and loss work per group
  (per-group BatchNorm with the running statistics updated in closed form,
  per-group span packing, per-group loss normalisation). On a mesh whose batch
  axes hold D devices with D dividing G, every device holds G/D whole groups:
  plain data parallelism, no replication, and the accelerator sees G*m/D rows
  at once instead of m.
* ``accumulation="scan"``: G micro-batches of m in a ``lax.scan``, the loss
  function called on each with ``groups=1`` (1/G of the activation memory, for
  memory-bound cases). Micro-batch a takes rows a, a + G, a + 2G, ...
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jml_jax.sharding import Rules, activation_sharding, fit_spec_to_shape, replicated
from jml_jax.train_state import TrainState

# loss_fn(params, batch_stats, batch, rng, train, *, groups=1)
#   -> (loss, (aux_metrics, new_batch_stats))
LossFn = Callable[..., tuple[jax.Array, tuple[dict, Any]]]
# forward_fn(params, batch_stats, batch) -> outputs (a pytree of [batch, ...] arrays)
ForwardFn = Callable[[Any, Any, Any], Any]

STEP_METRICS = ("loss", "grad_norm", "is_finite")
ACCUMULATIONS = ("one_pass", "scan")


def tracing_context(mesh, rules):
    """`jml_jax.sharding.activation_sharding` under ``rules``, or nothing when
    ``rules`` is None: what every step and evaluator is traced in."""
    if rules is None:
        return contextlib.nullcontext()
    return activation_sharding(mesh, rules)


def split_micro_batches(batch: Any, accum: int, sharding: NamedSharding | None = None) -> Any:
    """``[accum * micro, ...]`` leaves -> ``[accum, micro, ...]``.

    Micro-batch ``a`` takes rows ``a, a + accum, a + 2 * accum, ...``: a strided
    split keeps every row on the device that already holds it (a contiguous
    split would move rows between devices). With ``sharding``, the micro
    dimension is pinned to the batch axes of its mesh.
    """

    def one(x):
        if x.ndim == 0 or x.shape[0] % accum:
            raise ValueError(
                f"batch leaf of shape {x.shape} does not split into {accum} micro-batches"
            )
        micro = x.shape[0] // accum
        y = x.reshape((micro, accum) + x.shape[1:]).swapaxes(0, 1)
        if sharding is not None:
            spec = PartitionSpec(None, *sharding.spec)
            spec = fit_spec_to_shape(spec, y.shape, sharding.mesh, "micro-batch")
            y = jax.lax.with_sharding_constraint(y, NamedSharding(sharding.mesh, spec))
        return y

    return jax.tree.map(one, batch)


def _all_finite(loss: jax.Array, grads: Any) -> jax.Array:
    ok = jnp.isfinite(loss)
    for g in jax.tree.leaves(grads):
        ok = ok & jnp.all(jnp.isfinite(g))
    return ok


def batch_axes_size(sharding: NamedSharding) -> int:
    """Devices the batch dimension is split over (the size of ``('data', 'fsdp')``)."""
    entry = sharding.spec[0] if len(sharding.spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(sharding.mesh.shape[a] for a in axes)


def check_groups_fit_mesh(
    grad_accum_steps: int, sharding: NamedSharding, batch_size: int | None = None
) -> None:
    """One-pass accumulation puts whole groups on each device of the batch axes.

    Raises:
      ValueError when the batch axes' size D does not divide the number of
      groups G (including D > G): a group would have to be split over devices
      (or the work replicated), which this mode never does silently. The
      message names the two ways out: a larger effective batch (more groups of
      the same size) or smaller groups (more grad_accum_steps of fewer
      sentences each).
    """
    groups, devices = int(grad_accum_steps), batch_axes_size(sharding)
    if groups % devices == 0:
        return
    mesh = dict(sharding.mesh.shape)
    more = math.lcm(groups, devices)
    if batch_size:
        micro = batch_size // groups if batch_size % groups == 0 else None
        have = f"batch_size={batch_size} = {groups} groups x {micro if micro else '?'} sentences"
        larger = (f"batch_size={more * micro} with grad_accum_steps={more}" if micro
                  else f"grad_accum_steps={more} and a batch_size divisible by it")
        smaller = next((k for k in range(devices, batch_size + 1, devices) if batch_size % k == 0), None)
        smaller = (f"grad_accum_steps={smaller} with batch_size={batch_size} "
                   f"({batch_size // smaller} sentence(s) per group)") if smaller else (
            f"a grad_accum_steps that is a multiple of {devices} and divides batch_size")
    else:
        have = f"{groups} groups of batch_size / {groups} sentences"
        larger = f"grad_accum_steps={more} and batch_size = {more} x the sentences per group"
        smaller = (f"a grad_accum_steps that is a multiple of {devices} and divides batch_size "
                   f"(fewer sentences per group)")
    raise ValueError(
        f"one-pass gradient accumulation shares whole groups over the {devices} devices of the "
        f"mesh's batch axes ('data', 'fsdp'), but grad_accum_steps={groups} ({have}) is not a "
        f"multiple of {devices} (mesh {mesh}). Choose one explicitly: a larger effective batch "
        f"(more groups of the same size: {larger}), or smaller groups (more grad_accum_steps of "
        f"fewer sentences: {smaller}); or a mesh whose batch axes' size divides {groups}; or "
        f"accumulation='scan', which splits each micro-batch over the devices or replicates it."
    )


def _accepts_groups(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: let the call decide
        return True
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "groups" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )


def pin_groups(batch: Any, groups: int, sharding: NamedSharding) -> Any:
    """Keeps each group of a ``[groups * m, ...]`` batch whole on one device.

    Every leaf is viewed as ``[groups, m, ...]`` with the group axis pinned to
    the batch axes of ``sharding`` (the caller checked that they divide
    ``groups``), then given back its shape: group g = contiguous rows
    g*m .. (g+1)*m - 1.
    """
    entry = sharding.spec[0] if len(sharding.spec) else None

    def one(x):
        if x.ndim == 0 or x.shape[0] % groups:
            raise ValueError(
                f"batch leaf of shape {x.shape} does not split into {groups} groups (micro-batches)"
            )
        y = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
        spec = PartitionSpec(entry, *([None] * (y.ndim - 1)))
        y = jax.lax.with_sharding_constraint(y, NamedSharding(sharding.mesh, spec))
        return y.reshape(x.shape)

    return jax.tree.map(one, batch)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    grad_accum_steps: int = 1,
    donate: bool = True,
    *,
    accumulation: Literal["one_pass", "scan"] = "one_pass",
    rules: Rules | None = None,
    batch_size: int | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_step(state, batch) -> (new_state, metrics)``, jitted:
    `train_step_body` with ``tx``, placed by ``in_shardings``/``out_shardings``."""
    body = train_step_body(loss_fn, state_shardings, batch_sharding, grad_accum_steps,
                           accumulation=accumulation, rules=rules, batch_size=batch_size)
    return jax.jit(
        lambda state, batch: body(state, batch, tx),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated(batch_sharding.mesh)),
        donate_argnums=(0,) if donate else (),
    )


def train_step_body(
    loss_fn: LossFn,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    grad_accum_steps: int = 1,
    *,
    accumulation: Literal["one_pass", "scan"] = "one_pass",
    rules: Rules | None = None,
    batch_size: int | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted ``step(state, batch, tx, accept=None) -> (new_state, metrics)``
    that `make_train_step` jits, and a population's step maps over its runs
    (jml_jax/population.py: one ``tx`` per run, built from its traced
    hyperparameters). ``accept``: a bool scalar; False refuses the update as a
    non-finite one is refused (a population's stopped run), None accepts.

    Args:
      loss_fn: ``(params, batch_stats, batch, rng, train, *, groups=1) ->
        (loss, (aux, new_batch_stats))``, called with ``train=True``.
        ``batch`` is ``groups`` contiguous groups of rows, each one of the
        original's mini-batches: ``loss`` is the mean over the groups of the
        per-group losses (each normalised within its group, e.g.
        `jml_jax.losses.jml_loss(..., groups=groups)`), BatchNorm works per
        group and ``new_batch_stats`` has one update per group, in group order
        (e.g. ``JMLModel(..., groups=groups)``); ``aux`` is a dict of arrays
        over the whole batch (floating: means, integer: totals). A loss
        function without a ``groups`` keyword is called without it and is
        accepted only where groups is 1 (scan mode, no accumulation).
      tx (an argument of the step): the optimizer (its state may not mirror the params).
      state_shardings: the `TrainState` of shardings from
        `jml_jax.train_state.create_sharded_state`.
      batch_sharding: applied to every batch leaf (`jml_jax.sharding.batch_sharding`).
      grad_accum_steps: G, the number of groups (mini-batches) of the global
        batch ``[G * m, ...]``; their losses and gradients are averaged, so a
        per-example-mean loss gives the full-batch gradient.
      donate (`make_train_step`): donate the old state's buffers to the new one.
      accumulation: ``"one_pass"`` (default): one call of ``loss_fn`` on the
        whole batch with ``groups=G``, group g = rows g*m .. (g+1)*m - 1,
        pinned whole to the devices (`pin_groups`); the mesh's batch axes'
        size must divide G (`check_groups_fit_mesh`, raised here). ``"scan"``:
        G calls with ``groups=1`` in a ``lax.scan`` over micro-batches (see
        `split_micro_batches`), BatchNorm statistics updated micro-batch after
        micro-batch; 1/G of the activation memory. Both give the same loss,
        gradients and statistics for the same groups (tests/test_one_pass.py).
      rules: logical axis rules (the same table as for the parameters); when
        given, `jml_jax.sharding.constrain` calls in model
        code pin activations while the step is traced. ``None``: they are
        no-ops and the compiler chooses activation layouts.
      batch_size: the global batch size, when known: only used to make the
        mesh error message concrete.

    Returns:
      The jitted step. ``metrics`` (replicated) holds ``loss``, ``grad_norm``
      (global norm of the averaged gradients), ``is_finite`` and the aux
      metrics (in scan mode floating ones averaged over micro-batches, integer
      ones summed). When the loss or any gradient is not finite, no update is
      applied: the whole state, ``step`` included, comes back unchanged and
      ``is_finite`` is False, so the caller can stop and name ``state.step``.

    Each step's randomness is ``fold_in(fold_in(state.rng, state.step), i)``
    for micro-batch ``i`` (scan), or with ``i = 0`` for the single call
    (one-pass; the dropout masks of the two modes therefore differ).
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"unknown accumulation {accumulation!r}; valid: {ACCUMULATIONS}")
    mesh = batch_sharding.mesh
    accum = int(grad_accum_steps)
    takes_groups = _accepts_groups(loss_fn)
    one_pass = accumulation == "one_pass" or accum == 1
    if one_pass and accum > 1:
        if not takes_groups:
            raise ValueError(
                f"one-pass accumulation (grad_accum_steps={accum}) calls loss_fn once with "
                f"groups={accum}, but {getattr(loss_fn, '__qualname__', loss_fn)} has no `groups` "
                f"keyword: give it `*, groups=1` (passed to the model and the loss), or use "
                f"accumulation='scan'"
            )
        check_groups_fit_mesh(accum, batch_sharding, batch_size)

    def grad_fn(params, batch_stats, batch, rng, groups):
        kwargs = {"groups": groups} if takes_groups else {}

        def loss_of(p):
            return loss_fn(p, batch_stats, batch, rng, True, **kwargs)

        return jax.value_and_grad(loss_of, has_aux=True)(params)

    def train_step(state: TrainState, batch: Any, tx: optax.GradientTransformation, accept=None):
        step_rng = jax.random.fold_in(state.rng, state.step)
        with tracing_context(mesh, rules):
            if one_pass:
                if accum > 1:
                    batch = pin_groups(batch, accum, batch_sharding)
                (loss, (aux, new_stats)), grads = grad_fn(
                    state.params, state.batch_stats, batch, jax.random.fold_in(step_rng, 0), accum
                )
            else:
                micro = split_micro_batches(batch, accum, batch_sharding)
                first = jax.tree.map(lambda x: x[0], micro)
                aux_shapes = jax.eval_shape(
                    lambda: grad_fn(state.params, state.batch_stats, first, step_rng, 1)[0][1][0]
                )

                def body(carry, xs):
                    g_sum, l_sum, a_sum, stats = carry
                    mb, i = xs
                    (l, (a, stats)), g = grad_fn(
                        state.params, stats, mb, jax.random.fold_in(step_rng, i), 1
                    )
                    g_sum = jax.tree.map(jnp.add, g_sum, g)
                    g_sum = jax.lax.with_sharding_constraint(g_sum, state_shardings.params)
                    a_sum = jax.tree.map(lambda s, v: s + v.astype(s.dtype), a_sum, a)
                    return (g_sum, l_sum + l, a_sum, stats), None

                init = (
                    jax.tree.map(jnp.zeros_like, state.params),
                    jnp.zeros((), jnp.float32),
                    jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shapes),
                    state.batch_stats,
                )
                (g_sum, l_sum, a_sum, new_stats), _ = jax.lax.scan(
                    body, init, (micro, jnp.arange(accum))
                )
                grads = jax.tree.map(lambda g: g / accum, g_sum)
                loss = l_sum / accum
                aux = jax.tree.map(
                    lambda s: s / accum if jnp.issubdtype(s.dtype, jnp.floating) else s, a_sum
                )
        grads = jax.lax.with_sharding_constraint(grads, state_shardings.params)
        is_finite = _all_finite(loss, grads)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        updated = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=new_stats,
            opt_state=new_opt_state,
        )
        # Keep the last good state when anything is NaN/Inf (or the update is refused).
        applied = is_finite if accept is None else is_finite & accept
        new_state = jax.tree.map(lambda n, o: jnp.where(applied, n, o), updated, state)
        clash = sorted(set(aux) & set(STEP_METRICS))
        if clash:
            raise ValueError(f"loss_fn aux metrics {clash} clash with the step's own metrics")
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "is_finite": is_finite,
            **aux,
        }
        return new_state, metrics

    return train_step


def make_eval_step(
    forward_fn: ForwardFn,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    *,
    outputs: Literal["replicated", "batch"] = "replicated",
    rules: Rules | None = None,
) -> Callable[[TrainState, Any], Any]:
    """Builds ``eval_step(state, batch) -> outputs``, jitted; the state is not donated.

    Args:
      forward_fn: ``(params, batch_stats, batch) -> outputs`` in inference mode
        (no dropout, BatchNorm running statistics).
      state_shardings, batch_sharding, rules: as in `make_train_step`.
      outputs: ``"replicated"`` (default) gathers the outputs onto every device,
        so every process can read them with ``np.asarray`` for host decoding;
        ``"batch"`` leaves them split like the batch (cheaper for large outputs;
        each process then reads its own rows from ``addressable_shards``).
    """
    if outputs not in ("replicated", "batch"):
        raise ValueError(f"outputs must be 'replicated' or 'batch', got {outputs!r}")
    mesh = batch_sharding.mesh
    out_sharding = replicated(mesh) if outputs == "replicated" else batch_sharding

    def eval_step(state: TrainState, batch: Any):
        with tracing_context(mesh, rules):
            return forward_fn(state.params, state.batch_stats, batch)

    return jax.jit(
        eval_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=out_sharding,
    )
