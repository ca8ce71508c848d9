"""A tiny model with logical axis names, BatchNorm statistics and a frozen part.

Shared by the sharding, step, checkpoint and multi-process tests (the worker
script imports it too), so that all of them train exactly the same thing.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jml_jax.sharding import constrain

FEATURES = 8
HIDDEN = 16


def _init(init, names):
    return nn.with_logical_partitioning(init, names)


class ToyMLP(nn.Module):
    """``x: [batch, 8] -> [batch, 8]``: Dense(embed->mlp), BatchNorm, ReLU, Dense(mlp->embed).

    ``frozen`` is a Dense whose parameters the toy optimizer never updates.
    """

    batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        x = constrain(x, ("batch", "embed"))
        h = nn.Dense(
            HIDDEN,
            kernel_init=_init(nn.initializers.lecun_normal(), ("embed", "mlp")),
            bias_init=_init(nn.initializers.normal(0.1), ("mlp",)),
            # BatchNorm cancels this bias: its gradient is rounding noise, which
            # Adam would blow up to full-size steps that differ between meshes.
            use_bias=not self.batch_norm,
            name="up",
        )(x)
        if self.batch_norm:
            h = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                scale_init=_init(nn.initializers.ones, ("norm",)),
                bias_init=_init(nn.initializers.zeros, ("norm",)),
                name="bn",
            )(h)
        h = constrain(nn.relu(h), ("batch", "mlp"))
        y = nn.Dense(
            FEATURES,
            kernel_init=_init(nn.initializers.lecun_normal(), ("mlp", "embed")),
            bias_init=_init(nn.initializers.zeros, ("embed",)),
            name="down",
        )(h)
        frozen = nn.Dense(
            FEATURES,
            kernel_init=_init(nn.initializers.lecun_normal(), ("embed", "embed_out_unmapped")),
            name="frozen",
        )(x)
        return y + 0.1 * frozen


def init_fn(model: ToyMLP):
    def init(rng):
        return model.init(rng, jnp.zeros((2, FEATURES), jnp.float32), train=False)

    return init


def make_tx(learning_rate: float = 0.05) -> optax.GradientTransformation:
    """Adam on everything except ``frozen``, which has no optimizer state."""

    def labels(params):
        return {k: jax.tree.map(lambda _: "frozen" if k == "frozen" else "train", v)
                for k, v in params.items()}

    return optax.multi_transform(
        {"train": optax.adam(learning_rate), "frozen": optax.set_to_zero()}, labels
    )


def loss_fn(model: ToyMLP):
    """Per-example mean squared error, with BatchNorm statistics updated in training."""

    def fn(params, batch_stats, batch, rng, train):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        if train and batch_stats:
            pred, updates = model.apply(variables, batch["x"], train=True, mutable=["batch_stats"])
            new_stats = updates["batch_stats"]
        else:
            pred = model.apply(variables, batch["x"], train=train)
            new_stats = batch_stats
        err = jnp.mean((pred - batch["y"]) ** 2, axis=-1)  # [batch]
        loss = jnp.mean(err)
        aux = {
            "mse": loss,
            "examples": jnp.asarray(batch["x"].shape[0], jnp.int32),
            "noise": jax.random.uniform(rng, ()),
        }
        return loss, (aux, new_stats)

    return fn


def forward_fn(model: ToyMLP):
    def fn(params, batch_stats, batch):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        return {"pred": model.apply(variables, batch["x"], train=False)}

    return fn


def make_batches(num: int, batch_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Deterministic regression data: ``y = tanh(x @ W)``."""
    rs = np.random.RandomState(seed)
    w = rs.normal(size=(FEATURES, FEATURES)).astype(np.float32)
    out = []
    for _ in range(num):
        x = rs.normal(size=(batch_size, FEATURES)).astype(np.float32)
        out.append({"x": x, "y": np.tanh(x @ w).astype(np.float32)})
    return out
