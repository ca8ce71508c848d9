"""Dense and LayerNorm layers of the JML heads, with logical axis names.

Every parameter carries logical axis names (jml_jax/axes.py maps them to mesh
axes). Initialisation follows the original's final ``apply`` (§8 "init of new
layers"): Linear weights from N(0, 0.02); biases start at zero here (PyTorch
keeps its uniform default; the difference only affects training from scratch).
Parameters are float32; ``dtype`` is the compute dtype.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jml_jax.axes import NORM

INIT_STD = 0.02


def dense(
    features: int,
    axes: tuple[str, str],
    name: str,
    dtype: Any = jnp.float32,
    use_bias: bool = True,
) -> nn.Dense:
    """A Dense layer whose kernel [in, out] is annotated with ``axes``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]),
        name=name,
    )


def dense_general(
    features: int | Sequence[int],
    axes: tuple[str, ...],
    name: str,
    dtype: Any = jnp.float32,
    axis: int | Sequence[int] = -1,
) -> nn.DenseGeneral:
    """A bias-free DenseGeneral (the JML attention projections, §2.1)."""
    return nn.DenseGeneral(
        features,
        axis=axis,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), axes),
        name=name,
    )


def layer_norm(epsilon: float, name: str) -> nn.LayerNorm:
    """LayerNorm computed in float32 with ``scale``/``bias`` annotated 'norm'."""
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (NORM,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (NORM,)),
        name=name,
    )
