"""Logical axis names and the default logical -> mesh axis rules.

Model code names the dimensions of its parameters (through
``nn.with_logical_partitioning``) and of a few key activations with the
constants below. `jml_jax.sharding` turns those names into mesh placements with
a rules table: a tuple of ``(logical_name, mesh_axes)`` pairs, where
``mesh_axes`` is a mesh axis name, a tuple of them, or ``None`` (replicated).
Rules are tried in order; a mesh axis is used at most once per array, so a later
rule for the same logical name acts as a fallback (flax semantics). A config
overrides the table with its own tuple of pairs.

The mesh has three axes:

* ``data``: pure data parallelism (parameters replicated across it);
* ``fsdp``: data parallelism that also shards parameters and optimizer state
  (ZeRO-3 style: weights are gathered per layer inside the step);
* ``tensor``: model parallelism over attention heads, MLP width and vocab.
"""

from __future__ import annotations

# Mesh axes, in mesh order.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)
# The leading axis of a population's mesh (jml_jax/population.py): R runs of
# one architecture trained in one program, each run's arrays on its own slice
# of this axis; the three axes above then hold each run as they hold a single run.
RUNS = "runs"
# The one axis of the relation cache's own mesh (jml_jax/relation_cache.py):
# the rows of a batch of examples, over every device.
ROWS = "rows"

# Activation dimensions.
BATCH = "batch"
LENGTH = "length"
REGIONS = "regions"  # image regions (the 7x7 ResNet grid, flattened)

# Parameter dimensions.
VOCAB = "vocab"
EMBED = "embed"  # the text hidden size
HEADS = "heads"  # attention heads x head size, as one flattened dimension
KV = "kv"  # per-head features, when kept as a separate dimension
MLP = "mlp"  # feed-forward intermediate width
NORM = "norm"  # LayerNorm / BatchNorm scale and bias
CONV_H = "conv_h"
CONV_W = "conv_w"
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
IMG_EMBED = "img_embed"  # image feature width (2048 for ResNet-152)

LOGICAL_AXES = (
    BATCH, LENGTH, REGIONS, VOCAB, EMBED, HEADS, KV, MLP, NORM,
    CONV_H, CONV_W, CONV_IN, CONV_OUT, IMG_EMBED,
)

# Default rules. Every weight matrix has one dimension on ``fsdp`` (so weights
# and Adam moments are split across data-parallel replicas) and, where it is a
# head/MLP/vocab projection, the other on ``tensor`` (Megatron-style split). A
# dimension whose size does not divide its mesh axes is replicated instead; see
# `jml_jax.sharding.fit_spec_to_shape`.
#
# Conv kernels are split on their output channels over ``fsdp`` only: the
# ResNets are data-parallel. With ``tensor`` in a conv kernel's spec (input
# channels on ``fsdp`` and output channels on ``tensor``, or output channels on
# both), XLA's SPMD partitioner (jax 0.10) returned wrong ResNet gradients on
# the (2, 2, 2) and (1, 1, 8) meshes while the loss was right; a pure-JAX
# conv -> ReLU -> conv -> train-mode BatchNorm chain reproduces it. The test
# tests/test_mesh_sharding.py::test_resnet_gradients_match_one_device_on_every_mesh
# guards these rules.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, (DATA, FSDP)),
    (LENGTH, None),
    (REGIONS, None),
    (VOCAB, TENSOR),
    (EMBED, FSDP),
    (HEADS, TENSOR),
    (KV, None),
    (MLP, TENSOR),
    (NORM, None),
    (CONV_H, None),
    (CONV_W, None),
    (CONV_IN, None),
    (CONV_OUT, FSDP),
    (IMG_EMBED, TENSOR),
)
