"""The device mesh: axes ``('data', 'fsdp', 'tensor')`` built from the config."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from jml_jax.axes import MESH_AXES, RUNS


def resolve_mesh_shape(
    mesh_shape: Sequence[int] | Mapping[str, int], num_devices: int
) -> tuple[int, int, int]:
    """Returns the ``(data, fsdp, tensor)`` sizes, with a ``-1`` entry inferred.

    Args:
      mesh_shape: three ints in mesh-axis order, or a mapping with keys
        ``data``, ``fsdp``, ``tensor`` (a missing key counts as 1). At most one
        size may be ``-1``: it takes whatever the device count leaves.
      num_devices: how many devices the mesh must cover exactly.

    Raises:
      ValueError naming the shape and the device count when they do not fit.
    """
    if isinstance(mesh_shape, Mapping) or hasattr(mesh_shape, "items"):
        unknown = sorted(set(mesh_shape.keys()) - set(MESH_AXES))
        if unknown:
            raise ValueError(
                f"mesh_shape has unknown axes {unknown}; valid axes are {MESH_AXES}"
            )
        sizes = [int(mesh_shape.get(name, 1)) for name in MESH_AXES]
    else:
        sizes = [int(s) for s in mesh_shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(
                f"mesh_shape {tuple(mesh_shape)} must have {len(MESH_AXES)} sizes, "
                f"one per axis {MESH_AXES}"
            )
    described = dict(zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh_shape {described}: at most one size may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh_shape {described}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"mesh_shape {described}: the fixed sizes multiply to {known}, "
                f"which does not divide the {num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    elif known != num_devices:
        raise ValueError(
            f"mesh_shape {described} covers {known} devices but {num_devices} are "
            "available; the product must equal the device count (or use -1)"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(
    mesh_shape: Sequence[int] | Mapping[str, int],
    devices: Sequence[jax.Device] | None = None,
    *,
    runs: int | None = None,
) -> Mesh:
    """Builds the ``('data', 'fsdp', 'tensor')`` mesh, or ``('runs', 'data', 'fsdp', 'tensor')``.

    Args:
      mesh_shape: see `resolve_mesh_shape`; with ``runs`` it lays out the
        devices of one slice of the runs axis (``len(devices) / runs``).
      devices: the devices to lay out (default: all devices of all processes,
        ``jax.devices()``). Their count must equal the mesh size.
      runs: the size of a population's leading ``runs`` axis
        (jml_jax/population.py); None: no such axis.

    Returns:
      A `jax.sharding.Mesh` whose axes are all ``AxisType.Auto``: shardings come
      from ``jax.jit``'s ``in_shardings``/``out_shardings`` and the compiler
      propagates the rest (``jax.make_mesh`` would default to Explicit axes).
    """
    devices = list(jax.devices() if devices is None else devices)
    if runs is not None:
        runs = int(runs)
        if runs < 1 or len(devices) % runs:
            raise ValueError(
                f"runs.axis={runs}: the runs axis must divide the {len(devices)} devices "
                f"(choose a divisor of {len(devices)}, or 0 for the largest one that also divides the runs)"
            )
        shape = (runs,) + resolve_mesh_shape(mesh_shape, len(devices) // runs)
        return jax.make_mesh(shape, (RUNS,) + MESH_AXES, axis_types=(AxisType.Auto,) * (1 + len(MESH_AXES)),
                             devices=devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    # jax.make_mesh orders devices for the physical topology (ICI rings on TPU,
    # NVLink islands on GPU) and keeps each process's devices together, which
    # is what multi-host batch loading relies on.
    return jax.make_mesh(
        shape,
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def describe_mesh(mesh: Mesh) -> str:
    """``'data=2 fsdp=2 tensor=2 over 8 cpu devices'``, for logs."""
    sizes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
    kind = np.asarray(mesh.devices).flat[0].platform
    return f"{sizes} over {mesh.devices.size} {kind} devices"
