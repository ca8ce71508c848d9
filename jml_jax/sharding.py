"""Logical axis names -> `NamedSharding`s, global batches, activation constraints.

Three kinds of placement go through here:

* parameters: `params_shardings` reads the logical names that model code put on
  its parameters (``nn.with_logical_partitioning``) from the boxed tree that
  ``jax.eval_shape(model.init, ...)`` returns, and maps them with a rules table
  (`jml_jax.axes.DEFAULT_RULES` or the config's);
* batches: `batch_sharding` splits the leading dimension over
  ``('data', 'fsdp')``, and `global_batch_from_process_local` assembles the
  per-process NumPy batches into global `jax.Array`s (the one place that calls
  ``jax.make_array_from_process_local_data``);
* activations: `constrain(x, names)` inside model code pins an activation's
  layout while a step function is traced under `activation_sharding`; it is a
  no-op otherwise (eager calls, single-device tests).

Logical names without a rule are replicated (and logged once); a mesh axis that
does not divide its dimension is dropped from that dimension (and logged once),
so odd sizes such as a vocabulary of 100 on 8 devices never fail.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jml_jax.axes import DATA, DEFAULT_RULES, FSDP

log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

_logged_unmapped: set[str] = set()
_logged_dropped: set[tuple[str, int, Any]] = set()
_log_lock = threading.Lock()


def normalize_rules(rules: Sequence[Sequence[Any]] | None, mesh: Mesh | None = None) -> Rules:
    """Checks a rules table and returns it as a tuple of ``(name, mesh_axes)``.

    Accepts lists as well as tuples (configs often hold lists); ``None`` means
    `jml_jax.axes.DEFAULT_RULES`. With ``mesh``, every mesh axis named must be
    one of the mesh's axes.

    Raises:
      ValueError naming the offending rule.
    """
    if rules is None:
        rules = DEFAULT_RULES
    out = []
    for i, rule in enumerate(rules):
        if isinstance(rule, (str, bytes)) or len(rule) != 2:
            raise ValueError(
                f"logical axis rule #{i} {rule!r} must be a (logical_name, mesh_axes) pair"
            )
        name, target = rule
        if not isinstance(name, str):
            raise ValueError(f"logical axis rule #{i} {rule!r}: the name must be a string")
        if target is None or isinstance(target, str):
            axes = () if target is None else (target,)
        else:
            target = tuple(target)
            axes = target
            if not all(isinstance(a, str) for a in axes):
                raise ValueError(
                    f"logical axis rule #{i} {rule!r}: mesh axes must be strings or None"
                )
            if len(target) == 1:
                target = target[0]
            elif not target:
                target = None
        if mesh is not None:
            unknown = [a for a in axes if a not in mesh.axis_names]
            if unknown:
                raise ValueError(
                    f"logical axis rule #{i} {rule!r} names mesh axes {unknown} that "
                    f"the mesh {tuple(mesh.axis_names)} does not have"
                )
        out.append((name, target))
    return tuple(out)


def _entry_axes(entry: MeshAxes) -> tuple[str, ...]:
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def fit_spec_to_shape(
    spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, what: str = "array"
) -> PartitionSpec:
    """Drops mesh axes from dimensions that they do not divide.

    For each dimension the longest prefix of its mesh axes whose total size
    divides the dimension is kept, e.g. ``('data', 'fsdp')`` on a dimension of 4
    with data=2, fsdp=4 becomes ``'data'``; a vocabulary of 30522 on tensor=4
    becomes replicated. Each change is logged once per (what, dimension).

    Raises:
      ValueError if the spec has more entries than the array has dimensions.
    """
    shape = tuple(shape)
    if len(spec) > len(shape):
        raise ValueError(
            f"{what}: partition spec {spec} has {len(spec)} entries but the array "
            f"has shape {shape}"
        )
    entries = []
    for dim, entry in enumerate(spec):
        axes = _entry_axes(entry)
        if entry is PartitionSpec.UNCONSTRAINED or not axes:
            entries.append(entry)
            continue
        keep = len(axes)
        while keep and shape[dim] % math.prod(mesh.shape[a] for a in axes[:keep]):
            keep -= 1
        if keep == len(axes):
            entries.append(entry)
            continue
        kept = axes[:keep]
        new_entry = None if not kept else (kept[0] if len(kept) == 1 else kept)
        key = (what, dim, entry)
        with _log_lock:
            first = key not in _logged_dropped
            _logged_dropped.add(key)
        if first:
            log.info(
                "%s: dimension %d of size %d is not divisible by mesh axes %s "
                "(sizes %s); sharding it over %s instead",
                what, dim, shape[dim], axes, [mesh.shape[a] for a in axes], new_entry,
            )
        entries.append(new_entry)
    return PartitionSpec(*entries)


def logical_to_mesh_spec(
    names: Sequence[str | None] | PartitionSpec | None,
    rules: Rules | None,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
    what: str = "array",
) -> PartitionSpec:
    """Maps one array's logical dimension names to a mesh `PartitionSpec`.

    Names with no rule are replicated and logged once (not an error: model code
    may name dimensions that a given rules table does not care about). With
    ``mesh`` and ``shape``, axes that do not divide their dimension are dropped
    (`fit_spec_to_shape`).
    """
    if names is None:
        return PartitionSpec()
    rules = normalize_rules(rules, mesh)
    names = tuple(names)
    known = {name for name, _ in rules}
    unmapped = [n for n in names if isinstance(n, str) and n not in known]
    for n in unmapped:
        with _log_lock:
            first = n not in _logged_unmapped
            _logged_unmapped.add(n)
        if first:
            log.warning(
                "logical axis name %r has no sharding rule; it is replicated "
                "(first seen on %s)", n, what,
            )
    spec = nn.logical_to_mesh_axes(names, rules)
    if mesh is not None and shape is not None:
        spec = fit_spec_to_shape(spec, shape, mesh, what)
    return spec


def _is_spec_leaf(x: Any) -> bool:
    return x is None or isinstance(x, PartitionSpec) or (
        isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x)
    )


def logical_to_mesh_sharding(
    logical_specs: Any,
    mesh: Mesh,
    rules: Rules | None,
    shapes: Any = None,
) -> Any:
    """Tree of logical specs -> tree of `NamedSharding`.

    Args:
      logical_specs: a pytree whose leaves are logical specs (a `PartitionSpec`
        or tuple of logical names, or ``None`` for replicated).
      mesh: the device mesh.
      rules: the rules table (``None``: the default rules).
      shapes: optional pytree of the same structure whose leaves have
        ``.shape``; when given, non-dividing mesh axes are dropped.
    """
    rules = normalize_rules(rules, mesh)
    paths_specs, treedef = jax.tree_util.tree_flatten_with_path(
        logical_specs, is_leaf=_is_spec_leaf
    )
    shape_leaves = [None] * len(paths_specs)
    if shapes is not None:
        shape_leaves = treedef.flatten_up_to(shapes)
    out = []
    for (path, names), shaped in zip(paths_specs, shape_leaves):
        spec = logical_to_mesh_spec(
            names, rules, mesh,
            shape=None if shaped is None else shaped.shape,
            what=jax.tree_util.keystr(path),
        )
        out.append(NamedSharding(mesh, spec))
    return jax.tree_util.tree_unflatten(treedef, out)


def params_shardings(abstract_variables: Any, mesh: Mesh, rules: Rules | None) -> Any:
    """Shardings for a (boxed) variable tree, with the boxes removed.

    Args:
      abstract_variables: the output of ``jax.eval_shape(model.init, ...)`` or
        any part of it: leaves are ``nn.LogicallyPartitioned`` boxes (logical
        names), ``nn.Partitioned`` boxes (mesh axis names used as is) or bare
        ``jax.ShapeDtypeStruct``/arrays (replicated).
      mesh, rules: as in `logical_to_mesh_sharding`.

    Returns:
      A tree of `NamedSharding` with the structure of
      ``nn.meta.unbox(abstract_variables)``.
    """
    rules = normalize_rules(rules, mesh)

    def one(path, leaf):
        what = jax.tree_util.keystr(path)
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec = logical_to_mesh_spec(leaf.names, rules, mesh, leaf.value.shape, what)
        elif isinstance(leaf, meta.Partitioned):
            spec = fit_spec_to_shape(PartitionSpec(*leaf.names), leaf.value.shape, mesh, what)
        else:
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(
        one, abstract_variables, is_leaf=lambda x: isinstance(x, meta.AxisMetadata)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ``('data', 'fsdp')``; rest replicated."""
    return NamedSharding(mesh, PartitionSpec((DATA, FSDP)))


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Attaches shardings to an abstract tree: leaves become `ShapeDtypeStruct`s.

    The result is the target that Orbax restores into (`jml_jax.checkpointing`).
    """
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def process_batch_rows(mesh: Mesh, global_batch_size: int) -> slice:
    """The rows of each global batch that this process must load.

    `global_batch_from_process_local` expects every process to pass exactly
    these rows, in order. Processes own contiguous row blocks because
    `jml_jax.mesh.make_mesh` keeps each process's devices together.

    Raises:
      ValueError if the batch size does not divide over ``('data', 'fsdp')`` or
      this process's rows are not one contiguous block.
    """
    shards = mesh.shape[DATA] * mesh.shape[FSDP]
    if global_batch_size % shards:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by "
            f"data*fsdp = {shards} (mesh {dict(mesh.shape)})"
        )
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    bounds = sorted({(idx[0].start or 0, idx[0].stop or global_batch_size) for idx in index_map.values()})
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        if stop != start:
            raise ValueError(
                f"process {jax.process_index()} owns non-contiguous batch rows {bounds} "
                f"on mesh {dict(mesh.shape)}"
            )
    return slice(bounds[0][0], bounds[-1][1])


def global_batch_from_process_local(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Per-process NumPy batch -> global `jax.Array`s split over ``('data', 'fsdp')``.

    Args:
      batch: a (possibly nested) dict of arrays, each ``[local_batch, ...]``:
        this process's rows of the global batch (`process_batch_rows`).
      mesh: the device mesh.

    Returns:
      The same structure of global arrays ``[local_batch * process_count, ...]``.

    Raises:
      ValueError naming the entry when a leaf has no batch dimension or its
      rows do not split over this process's devices.
    """
    sharding = batch_sharding(mesh)
    local_shards = max(
        1, mesh.shape[DATA] * mesh.shape[FSDP] // max(1, jax.process_count())
    )

    def one(path, value):
        key = jax.tree_util.keystr(path)
        arr = np.asarray(value)
        if arr.ndim == 0:
            raise ValueError(f"batch{key} is a scalar; every batch entry needs a leading batch dimension")
        if arr.shape[0] % local_shards:
            raise ValueError(
                f"batch{key} has {arr.shape[0]} rows on process {jax.process_index()}, not "
                f"divisible by its {local_shards} batch shards (mesh {dict(mesh.shape)})"
            )
        try:
            return jax.make_array_from_process_local_data(sharding, arr)
        except ValueError as err:
            raise ValueError(
                f"batch{key} of local shape {arr.shape} cannot form a global array on "
                f"mesh {dict(mesh.shape)}: {err}"
            ) from err

    return jax.tree_util.tree_map_with_path(one, dict(batch))


# ---------------------------------------------------------------------------
# Activation constraints.

_active = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules | None) -> Iterator[None]:
    """Makes `constrain` active while a step function is traced.

    The step builders in `jml_jax.steps` enter this around the traced loss and
    forward functions; nothing else needs to.
    """
    previous = getattr(_active, "value", None)
    _active.value = (mesh, normalize_rules(rules, mesh))
    try:
        yield
    finally:
        _active.value = previous


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins activation ``x`` to the layout of its logical dimension ``names``.

    Call from model code, e.g. ``constrain(h, ('batch', 'length', 'embed'))``
    for ``h: [batch, length, hidden]``. A no-op outside `activation_sharding`.
    """
    ctx = getattr(_active, "value", None)
    if ctx is None:
        return x
    mesh, rules = ctx
    if len(names) != x.ndim:
        raise ValueError(
            f"constrain: {len(names)} logical names {tuple(names)} for an array of shape {x.shape}"
        )
    spec = logical_to_mesh_spec(names, rules, mesh, x.shape, what=f"activation {tuple(names)}")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
