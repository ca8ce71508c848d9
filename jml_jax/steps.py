"""Model-agnostic jitted train and eval steps.

The model enters only through a loss function (training) or a forward function
(evaluation); the step handles randomness, gradient accumulation, the optimizer
update, non-finite protection, and placement (``jax.jit`` with
``in_shardings``/``out_shardings`` and donation of the old state).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jml_jax.sharding import Rules, activation_sharding, fit_spec_to_shape, replicated
from jml_jax.train_state import TrainState

# loss_fn(params, batch_stats, batch, rng, train) -> (loss, (aux_metrics, new_batch_stats))
LossFn = Callable[[Any, Any, Any, jax.Array, bool], tuple[jax.Array, tuple[dict, Any]]]
# forward_fn(params, batch_stats, batch) -> outputs (a pytree of [batch, ...] arrays)
ForwardFn = Callable[[Any, Any, Any], Any]

STEP_METRICS = ("loss", "grad_norm", "is_finite")


def _tracing_context(mesh, rules):
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


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    grad_accum_steps: int = 1,
    donate: bool = True,
    *,
    rules: Rules | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_step(state, batch) -> (new_state, metrics)``, jitted.

    Args:
      loss_fn: ``(params, batch_stats, batch, rng, train) -> (loss, (aux,
        new_batch_stats))``, called with ``train=True``. ``loss`` is a scalar
        mean over the examples of ``batch``; ``aux`` a dict of arrays.
      tx: the optimizer (its state may not mirror the params).
      state_shardings: the `TrainState` of shardings from
        `jml_jax.train_state.create_sharded_state`.
      batch_sharding: applied to every batch leaf (`jml_jax.sharding.batch_sharding`).
      grad_accum_steps: the global batch ``[accum * micro, ...]`` is processed
        as ``accum`` micro-batches in a ``lax.scan`` (see `split_micro_batches`);
        gradients and the loss are summed and divided by ``accum``, so a
        per-example-mean loss gives the full-batch gradient. BatchNorm
        statistics are updated micro-batch after micro-batch.
      donate: donate the old state's buffers to the new one.
      rules: logical axis rules (the same table as for the parameters); when
        given, `jml_jax.sharding.constrain` calls in model
        code pin activations while the step is traced. ``None``: they are
        no-ops and the compiler chooses activation layouts.

    Returns:
      The jitted step. ``metrics`` (replicated) holds ``loss``, ``grad_norm``
      (global norm of the averaged gradients), ``is_finite`` and the aux
      metrics (floating ones averaged over micro-batches, integer ones summed).
      When the loss or any gradient is not finite, no update is applied: the
      whole state, ``step`` included, comes back unchanged and ``is_finite`` is
      False, so the caller can stop and name ``state.step``.

    Each step's randomness is ``fold_in(fold_in(state.rng, state.step), i)``
    for micro-batch ``i``.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    mesh = batch_sharding.mesh
    accum = int(grad_accum_steps)

    def grad_fn(params, batch_stats, batch, rng):
        def loss_of(p):
            return loss_fn(p, batch_stats, batch, rng, True)

        return jax.value_and_grad(loss_of, has_aux=True)(params)

    def train_step(state: TrainState, batch: Any):
        step_rng = jax.random.fold_in(state.rng, state.step)
        with _tracing_context(mesh, rules):
            if accum == 1:
                (loss, (aux, new_stats)), grads = grad_fn(
                    state.params, state.batch_stats, batch, jax.random.fold_in(step_rng, 0)
                )
            else:
                micro = split_micro_batches(batch, accum, batch_sharding)
                first = jax.tree.map(lambda x: x[0], micro)
                aux_shapes = jax.eval_shape(
                    lambda: grad_fn(state.params, state.batch_stats, first, step_rng)[0][1][0]
                )

                def body(carry, xs):
                    g_sum, l_sum, a_sum, stats = carry
                    mb, i = xs
                    (l, (a, stats)), g = grad_fn(
                        state.params, stats, mb, jax.random.fold_in(step_rng, i)
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
        # Keep the last good state when anything is NaN/Inf.
        new_state = jax.tree.map(lambda n, o: jnp.where(is_finite, n, o), updated, state)
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

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


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
        with _tracing_context(mesh, rules):
            return forward_fn(state.params, state.batch_stats, batch)

    return jax.jit(
        eval_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=out_sharding,
    )
