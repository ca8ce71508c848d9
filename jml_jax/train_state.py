"""The training state and its sharded, never-on-host initialisation."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh

from jml_jax.sharding import Rules, normalize_rules, params_shardings, replicated, with_shardings

InitFn = Callable[[jax.Array], Any]


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a plain pytree (Orbax saves it as is).

    Attributes:
      step: int32 scalar, the number of updates applied so far.
      params: the parameter tree (unboxed ``variables['params']``).
      batch_stats: BatchNorm running statistics, ``{}`` when the model has none.
      opt_state: the optimizer state. It need not mirror ``params`` (frozen
        parameters may have no state at all); nothing here assumes it does.
      rng: a raw ``uint32[2]`` PRNG key. Each step draws its randomness from
        ``jax.random.fold_in(rng, step)``, so a resumed run repeats the same
        dropout masks as an uninterrupted one.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def raw_key(rng: jax.Array) -> jax.Array:
    """A ``uint32[2]`` key from either a raw or a typed (``jax.random.key``) key."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return rng


def _key_path(path) -> tuple:
    out = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                out.append(getattr(entry, attr))
                break
        else:
            out.append(str(entry))
    return tuple(out)


def opt_state_shardings(abstract_opt_state: Any, abstract_params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer state, following the parameters it mirrors.

    An optimizer-state leaf whose tree path ends with a parameter's path and
    has that parameter's shape (Adam moments: ``mu/<param path>``) gets the
    parameter's sharding; any other leaf (step counts, masked-out entries,
    factored statistics) is replicated.
    """
    index = {}
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0],
        jax.tree_util.tree_leaves(param_shardings),
    ):
        index[_key_path(path)] = (tuple(leaf.shape), sharding)
    rep = replicated(mesh)

    def one(path, leaf):
        key = _key_path(path)
        for start in range(len(key)):
            hit = index.get(key[start:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return rep

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def _split_variables(variables: Any) -> tuple[Any, Any]:
    if not isinstance(variables, dict) and not hasattr(variables, "keys"):
        raise TypeError(f"init_fn must return a variables dict, got {type(variables).__name__}")
    unknown = sorted(set(variables.keys()) - {"params", "batch_stats"})
    if unknown:
        raise ValueError(
            f"init_fn returned variable collections {unknown}; TrainState holds only "
            "'params' and 'batch_stats'"
        )
    if "params" not in variables:
        raise ValueError("init_fn returned no 'params' collection")
    return variables["params"], variables.get("batch_stats", {})


def _override(tree: Any, values: Any) -> Any:
    """``tree`` with the leaves that ``values`` (a matching sub-tree) gives."""
    if not values:
        return tree
    out = dict(tree)
    for key, value in values.items():
        out[key] = _override(tree[key], value) if isinstance(value, dict) else value
    return out


def state_init_fn(init_fn: InitFn, tx: optax.GradientTransformation) -> Callable[..., TrainState]:
    """``init(rng, given=None) -> TrainState`` of step 0, un-jitted: what
    `create_sharded_state` jits, and a population maps over its runs' keys."""

    def init(rng: jax.Array, given: Any = None) -> TrainState:
        init_rng, train_rng = jax.random.split(raw_key(rng))
        params, batch_stats = _split_variables(init_fn(init_rng))
        params = nn.meta.unbox(params)
        batch_stats = nn.meta.unbox(batch_stats)
        if given:  # pretrained values replace the random ones (whose draws XLA then drops)
            params = _override(params, given.get("params", {}))
            batch_stats = _override(batch_stats, given.get("batch_stats", {}))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            rng=train_rng,
        )

    return init


def abstract_sharded_state(
    init_fn: InitFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules | None,
    rng: jax.Array | None = None,
    *,
    boxed_variables: Any = None,
) -> tuple[TrainState, TrainState]:
    """The state's shapes and shardings, without computing anything.

    The model's init is traced once (``jax.eval_shape``); the optimizer state's
    shapes come from ``tx.init`` on the abstract parameters.

    Args:
      init_fn: ``rng -> variables`` (e.g. ``lambda r: model.init(r, *dummy)``),
        whose params may carry ``nn.with_logical_partitioning`` boxes.
      tx: the optimizer.
      mesh, rules: as in `jml_jax.sharding.params_shardings`.
      rng: any key (only its shape matters); default ``PRNGKey(0)``.
      boxed_variables: ``jax.eval_shape(init_fn, rng)`` when the caller has
        it already (the init is then not traced again).

    Returns:
      ``(abstract_state, state_shardings)``: a `TrainState` of
      ``jax.ShapeDtypeStruct`` carrying their shardings (an Orbax restore
      target) and the same-structured `TrainState` of `NamedSharding`.
    """
    rules = normalize_rules(rules, mesh)
    rng = raw_key(jax.random.PRNGKey(0) if rng is None else rng)
    if boxed_variables is None:
        boxed_variables = jax.eval_shape(init_fn, rng)
    # Specs come from the boxed tree; the state itself holds unboxed values.
    boxed_params, boxed_stats = _split_variables(boxed_variables)
    p_shardings = params_shardings(boxed_params, mesh, rules)
    s_shardings = params_shardings(boxed_stats, mesh, rules)
    params, batch_stats = nn.meta.unbox(boxed_params), nn.meta.unbox(boxed_stats)
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=jax.eval_shape(tx.init, params),
        rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype),
    )
    rep = replicated(mesh)
    shardings = TrainState(
        step=rep,
        params=p_shardings,
        batch_stats=s_shardings,
        opt_state=opt_state_shardings(abstract.opt_state, abstract.params, p_shardings, mesh),
        rng=rep,
    )
    return with_shardings(abstract, shardings), shardings


def create_sharded_state(
    init_fn: InitFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules | None,
    rng: jax.Array,
    shardings: TrainState | None = None,
    given: Any = None,
) -> tuple[TrainState, TrainState]:
    """Initialises the state directly into its shardings.

    ``rng`` is split in two: one half initialises the parameters, the other
    becomes ``state.rng``. Initialisation runs under ``jax.jit`` with
    ``out_shardings``, so each device only ever builds its own shards (a model
    larger than one device's memory, or the host's, still initialises).
    ``shardings``: the state's shardings when already known (from
    `abstract_sharded_state`), so the model is not traced again for them.
    ``given``: ``{'params': subtree, 'batch_stats': subtree}`` of values (e.g.
    pretrained weights, already placed in their shardings) that replace the
    random init inside the same jitted function, so no random value is
    computed for them.

    Returns:
      ``(state, state_shardings)``; ``state_shardings`` is a `TrainState` of
      `NamedSharding` for `jml_jax.steps`.
    """
    if shardings is None:
        _, shardings = abstract_sharded_state(init_fn, tx, mesh, rules, rng)
    init = jax.jit(state_init_fn(init_fn, tx), out_shardings=shardings)
    state = init(raw_key(rng), given)
    return state, shardings


def state_shardings_tree(state: TrainState) -> TrainState:
    """The `NamedSharding`s that a concrete state currently has."""
    return jax.tree.map(lambda x: x.sharding, state)


def make_finite_check(mesh) -> Callable[[Any], jax.Array]:
    """Jitted ``tree -> bool`` (replicated on ``mesh``): every float leaf is finite.

    The train step refuses updates whose loss or gradients are not finite, but
    finite gradients can still give non-finite parameters (a NaN or infinite
    learning rate); the loop checks before each save so no checkpoint holds them.
    """

    return jax.jit(all_finite, out_shardings=replicated(mesh))


def all_finite(tree) -> jax.Array:
    """bool scalar: every float leaf of ``tree`` is finite (traceable)."""
    ok = jnp.array(True)
    for x in jax.tree.leaves(tree):
        if jnp.issubdtype(x.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(x))
    return ok
