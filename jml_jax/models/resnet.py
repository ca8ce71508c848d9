"""ResNet image encoder in Flax linen, laid out like torchvision's ResNet (v1.5).

JML runs two ResNet-152 copies on every forward pass (original-jml-code.md §1.4,
§2.2, §11): the main one (fine-tuned, BatchNorm in train mode while training)
and the relation one (frozen, BatchNorm always in eval mode). Both feed the
layer4 map of a 224x224 image, [B, 7, 7, 2048], to the model as 49 regions,
region = 7 * row + col.

Layout (v1.5, as torchvision): the stride of a stage sits on the 3x3 conv of a
Bottleneck (conv2) and on its downsample conv; BasicBlock (depths 18/34) puts
it on its first 3x3 conv. A block gets a downsample (1x1 conv with the block's
stride, then BN) when its stride is not 1 or its input width differs from its
output width; for Bottleneck nets that includes block 0 of layer1 (64 != 256).
Padding is explicit and symmetric (never 'SAME', which pads stride-2 convs
asymmetrically): 7x7 stem stride 2 pad 3, every 3x3 pad 1, 1x1 pad 0, and a
3x3/2 max-pool with pad 1 filled with -inf. No conv has a bias.

Variable tree (names mirror torchvision so checkpoint conversion is a table;
see jml_jax/convert/resnet.py)::

    params/conv1/kernel                      [7, 7, 3, w]        HWIO
    params/bn1/{scale,bias}                  [w]
    batch_stats/bn1/{mean,var}               [w]
    params/layer{s}_{j}/conv{1,2,3}/kernel   HWIO (conv3 only in Bottleneck)
    params/layer{s}_{j}/bn{1,2,3}/{scale,bias}
    batch_stats/layer{s}_{j}/bn{1,2,3}/{mean,var}
    params/layer{s}_{j}/downsample_conv/kernel   [1, 1, c_in, c_out]
    params/layer{s}_{j}/downsample_bn/{scale,bias}
    batch_stats/layer{s}_{j}/downsample_bn/{mean,var}
    params/fc/{kernel,bias}                  [C, num_classes], [num_classes]
                                             (only when num_classes is set)

with s = 1..4 and j = 0..blocks[s-1]-1; torchvision's ``layer1.0.conv1``
is ``layer1_0/conv1`` here and ``downsample.0``/``downsample.1`` are
``downsample_conv``/``downsample_bn``.

Every parameter and batch statistic is created boxed with logical axis names
(``nn.with_logical_partitioning``): conv kernels ('conv_h', 'conv_w',
'conv_in', 'conv_out'), BatchNorm vectors ('norm',), the fc kernel
('img_embed', None) and its bias (None,). ``module.init`` therefore returns
``nn.LogicallyPartitioned`` leaves: read the names with
``nn.get_partition_spec`` and strip the boxes with
``flax.linen.meta.unbox(variables)`` before converting or checkpointing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jml_jax.axes import CONV_H, CONV_IN, CONV_OUT, CONV_W, IMG_EMBED, NORM


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch's ``MaxPool2d(3, stride=2, padding=1)`` on NHWC, built from slices.

    Same values as ``nn.max_pool`` (-inf padding) and the same gradient as
    torch and XLA's select-and-scatter: all of it goes to the first maximum of
    each window in row-major order. It is written with nine strided slices and
    a one-hot selection instead of ``reduce_window`` because XLA's SPMD
    partitioner produced wrong select-and-scatter gradients (loss right,
    gradients below the pool up to 100% off) with the batch split over two mesh
    axes and channels over a third; slices, compares and selects partition
    exactly. A NaN in a window comes out as NaN, as in torch.
    """
    b, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # floor((h + 2 - 3) / 2) + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    windows = [
        jax.lax.slice(padded, (0, di, dj, 0), (b, di + 2 * ho - 1, dj + 2 * wo - 1, c), (1, 2, 2, 1))
        for di in range(3) for dj in range(3)
    ]
    peak = jax.lax.stop_gradient(windows[0])
    for win in windows[1:]:
        peak = jnp.maximum(peak, jax.lax.stop_gradient(win))
    out = jnp.zeros_like(windows[0])
    taken = jnp.zeros(out.shape, bool)
    for win in windows:  # the first position holding the peak gets it
        pick = (jax.lax.stop_gradient(win) == peak) & ~taken
        out = jnp.where(pick, win, out)
        taken = taken | pick
    return jnp.where(jnp.isnan(peak), peak, out)


# Blocks per stage (layer1..layer4) of the standard depths.
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
# Depths built from BasicBlock (two 3x3 convs, expansion 1); the others use
# Bottleneck (1x1, 3x3, 1x1, expansion 4).
BASIC_DEPTHS = frozenset({18, 34})

CONV_AXES = (CONV_H, CONV_W, CONV_IN, CONV_OUT)
NORM_AXES = (NORM,)
# The fc input is the image feature width (jml_jax/axes.py IMG_EMBED); the
# class dimension is small and left unnamed (replicated).
FC_AXES = (IMG_EMBED, None)

# torchvision initialises conv kernels with kaiming_normal(fan_out, relu).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def is_bottleneck(depth: int) -> bool:
    """True when ``depth`` is built from Bottleneck blocks (50/101/152)."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(
            f"unknown ResNet depth {depth}; valid depths: {sorted(RESNET_BLOCKS)}"
        )
    return depth not in BASIC_DEPTHS


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
    pad = kernel // 2  # 7 -> 3, 3 -> 1, 1 -> 0: symmetric, as torch.
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_conv_init, CONV_AXES),
        name=name,
    )


def group_running_update(running, batch_stats, momentum: float, updates: int = 1):
    """The running statistic after ``updates`` momentum updates per group, in closed form.

    Applying ``r <- m * r + (1 - m) * s_g`` for groups g = 0..G-1 in order,
    ``updates`` times each (the original's main ResNet is updated twice per
    mini-batch, by its extraction and its train forward, §10.8), gives, with
    ``M = m ** updates``::

        r_G = M**G * r_0 + (1 - M) * sum_g M**(G-1-g) * s_g

    (two updates with equal s_g act as one with momentum m**2). One group and
    one update is the plain ``m * r + (1 - m) * s``.

    Args:
      running: [C] float32 running statistic r_0.
      batch_stats: [G, C] per-group statistics s_g, in group order.
      momentum: m (flax convention: the weight kept of the old value; torch's
        momentum 0.1 is 0.9 here).
      updates: momentum updates per group (>= 1).

    Returns:
      [C] float32.
    """
    if updates < 1:
        raise ValueError(f"BatchNorm running-statistic updates per group must be >= 1, got {updates}")
    groups = batch_stats.shape[0]
    decay = momentum**updates
    weights = jnp.asarray(
        [(1.0 - decay) * decay ** (groups - 1 - g) for g in range(groups)], jnp.float32
    )
    return decay**groups * running + jnp.einsum("g,gc->c", weights, batch_stats)


class TorchBatchNorm(nn.Module):
    """BatchNorm2d with PyTorch semantics over NHWC inputs, per group of rows.

    Eval: y = (x - mean) / sqrt(var + eps) * scale + bias with the running
    statistics. Train: normalises with the batch mean and the *biased* batch
    variance over (N, H, W) and updates
    ``mean = momentum * mean + (1 - momentum) * batch_mean`` and
    ``var = momentum * var + (1 - momentum) * unbiased_batch_var`` (torch
    momentum 0.1 == 0.9 here; flax's nn.BatchNorm would use the biased
    variance for the running update, which drifts from torch). Statistics and
    the normalisation run in float32 whatever ``dtype`` is; the output is cast
    to ``dtype``. Running statistics are not updated during ``init``.

    Groups (one-pass gradient accumulation, `jml_jax.steps.make_train_step`):
    called with ``groups=G`` in train mode, the batch is G contiguous groups of
    B/G rows and each group is normalised with its own statistics, exactly as
    G separate calls on the groups would; the running statistics receive
    ``updates`` momentum updates per group, group after group, applied in
    closed form (`group_running_update`). ``groups`` changes nothing in eval
    mode.

    Variables: params ``scale``, ``bias`` and batch_stats ``mean``, ``var``,
    each [C].
    """

    use_running_average: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    updates: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, groups: int = 1) -> jax.Array:
        """x: [B, H, W, C] -> [B, H, W, C] in ``dtype``; B divisible by ``groups``."""
        c = x.shape[-1]
        boxed = lambda init: nn.with_logical_partitioning(init, NORM_AXES)  # noqa: E731
        scale = self.param("scale", boxed(nn.initializers.ones), (c,), jnp.float32)
        bias = self.param("bias", boxed(nn.initializers.zeros), (c,), jnp.float32)
        ra_mean = self.variable(
            "batch_stats", "mean", boxed(nn.initializers.zeros), None, (c,), jnp.float32
        )
        ra_var = self.variable(
            "batch_stats", "var", boxed(nn.initializers.ones), None, (c,), jnp.float32
        )
        x32 = x.astype(jnp.float32)
        if self.use_running_average:
            mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
            return ((x32 - ra_mean.value) * mul + bias).astype(self.dtype)
        if groups < 1 or x.shape[0] % groups:
            raise ValueError(
                f"{self.path}: a batch of {x.shape[0]} rows does not split into {groups} "
                f"BatchNorm groups"
            )
        # [G, B/G, H, W, C]: contiguous groups. With the batch split over
        # devices in whole groups (`jml_jax.steps`), the statistics are local.
        xg = x32.reshape((groups, x.shape[0] // groups) + x.shape[1:])
        axes = tuple(range(1, xg.ndim - 1))
        n = 1
        for a in axes:
            n *= xg.shape[a]
        if n < 2:
            # torch refuses too: the unbiased variance needs n > 1.
            raise ValueError(
                f"{self.path}: train-mode BatchNorm needs more than one value per "
                f"channel, got input shape {x.shape} in {groups} group(s)"
            )
        mean = jnp.mean(xg, axis=axes, keepdims=True)  # [G, 1, 1, 1, C]
        # Two-pass variance: closer to torch than E[x^2] - E[x]^2.
        var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
        if not self.is_initializing():
            m, k = self.momentum, self.updates
            ra_mean.value = group_running_update(ra_mean.value, mean.reshape(groups, c), m, k)
            ra_var.value = group_running_update(
                ra_var.value, var.reshape(groups, c) * (n / (n - 1)), m, k
            )
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        y = (xg - mean) * mul + bias
        return y.reshape(x.shape).astype(self.dtype)


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3(stride) - BN - ReLU - 3x3 - BN, + shortcut, ReLU.

    [B, H, W, c_in] -> [B, H/stride, W/stride, planes].
    """

    planes: int
    stride: int = 1
    downsample: bool = False
    use_running_average: bool = True
    dtype: Any = jnp.float32
    bn_updates: int = 1

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, groups: int = 1) -> jax.Array:
        def bn(name, y):
            return TorchBatchNorm(
                self.use_running_average, dtype=self.dtype, updates=self.bn_updates, name=name
            )(y, groups)

        y = _conv(self.planes, 3, self.stride, self.dtype, "conv1")(x)
        y = nn.relu(bn("bn1", y))
        y = _conv(self.planes, 3, 1, self.dtype, "conv2")(y)
        y = bn("bn2", y)
        if self.downsample:
            x = _conv(self.planes, 1, self.stride, self.dtype, "downsample_conv")(x)
            x = bn("downsample_bn", x)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5): 1x1 - 3x3(stride) - 1x1(x4), BN after each.

    [B, H, W, c_in] -> [B, H/stride, W/stride, 4 * planes].
    """

    planes: int
    stride: int = 1
    downsample: bool = False
    use_running_average: bool = True
    dtype: Any = jnp.float32
    bn_updates: int = 1

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, groups: int = 1) -> jax.Array:
        def bn(name, y):
            return TorchBatchNorm(
                self.use_running_average, dtype=self.dtype, updates=self.bn_updates, name=name
            )(y, groups)

        out = self.planes * self.expansion
        y = _conv(self.planes, 1, 1, self.dtype, "conv1")(x)
        y = nn.relu(bn("bn1", y))
        y = _conv(self.planes, 3, self.stride, self.dtype, "conv2")(y)
        y = nn.relu(bn("bn2", y))
        y = _conv(out, 1, 1, self.dtype, "conv3")(y)
        y = bn("bn3", y)
        if self.downsample:
            x = _conv(out, 1, self.stride, self.dtype, "downsample_conv")(x)
            x = bn("downsample_bn", x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """torchvision-layout ResNet trunk returning the layer4 grid and its mean.

    Attributes:
      depth: 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck). Picks the
        block type, and the block counts unless ``blocks`` is given.
      blocks: per-stage block counts overriding RESNET_BLOCKS[depth], e.g.
        (1, 1, 1, 1) for the small parity model.
      width: stem width w (torchvision: 64). Stage s has planes w * 2**(s-1).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32 and
        BatchNorm statistics are computed in float32.
      frozen: always eval-mode BatchNorm (running statistics, never updated)
        and gradients stopped at the outputs, whatever ``train`` says; the
        relation module's ResNet in the joint model (§2.5, §11).
      num_classes: when set, an ``fc`` Dense(C -> num_classes) exists, as in
        torchvision, so checkpoints holding ``fc`` load. It never changes the
        outputs; its logits [B, num_classes] are sown as
        ``intermediates['fc_logits'][0]`` (apply with
        mutable=['intermediates'] to read them).
      bn_updates: momentum updates of the running statistics per train-mode
        call (per group, see ``groups``). 1 by default; the original updates
        the main ResNet's statistics twice per mini-batch (§10.8), which is 2.
    """

    depth: int = 152
    blocks: tuple[int, ...] | None = None
    width: int = 64
    dtype: Any = jnp.float32
    frozen: bool = False
    num_classes: int | None = None
    bn_updates: int = 1

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        blocks = tuple(self.blocks) if self.blocks is not None else RESNET_BLOCKS[self.depth]
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks must be 4 positive counts, got {blocks}")
        return blocks

    @property
    def out_features(self) -> int:
        """Channels C of the grid: 8w (BasicBlock) or 32w (Bottleneck)."""
        return self.width * 8 * (4 if is_bottleneck(self.depth) else 1)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False, groups: int = 1):
        """Encodes images.

        Args:
          images: [B, H, W, 3] normalised pixels (NHWC).
          train: batch-statistics BatchNorm that updates ``batch_stats`` (pass
            mutable=['batch_stats'] to apply). Ignored when ``frozen``.
          groups: in train mode, the batch is ``groups`` contiguous groups of
            B/groups images, each with its own BatchNorm statistics and its
            own running-statistic update(s), in group order: the same outputs
            and statistics as ``groups`` calls on the groups one after the
            other (`TorchBatchNorm`). No effect in eval mode.

        Returns:
          grid: [B, h*w, C] layer4 output, row-major (region = w*row + col;
            [B, 49, 2048] for a 224x224 input to a Bottleneck net of width 64).
          pooled: [B, C] spatial mean of the grid.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3] (NHWC), got {images.shape}")
        block_cls = Bottleneck if is_bottleneck(self.depth) else BasicBlock
        use_ra = self.frozen or not train

        x = images.astype(self.dtype)
        x = _conv(self.width, 7, 2, self.dtype, "conv1")(x)
        x = TorchBatchNorm(use_ra, dtype=self.dtype, updates=self.bn_updates, name="bn1")(
            x, groups
        )
        x = nn.relu(x)
        x = max_pool_3x3_s2(x)

        c_in = self.width
        for s, n_blocks in enumerate(self.stage_blocks, start=1):
            planes = self.width * 2 ** (s - 1)
            c_out = planes * block_cls.expansion
            for j in range(n_blocks):
                stride = 2 if (s > 1 and j == 0) else 1
                x = block_cls(
                    planes,
                    stride=stride,
                    downsample=(stride != 1 or c_in != c_out),
                    use_running_average=use_ra,
                    dtype=self.dtype,
                    bn_updates=self.bn_updates,
                    name=f"layer{s}_{j}",
                )(x, groups)
                c_in = c_out

        b, h, w, c = x.shape
        grid = x.reshape(b, h * w, c)
        pooled = jnp.mean(grid.astype(jnp.float32), axis=1).astype(self.dtype)
        if self.num_classes is not None:
            logits = nn.Dense(
                self.num_classes,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), FC_AXES
                ),
                bias_init=nn.with_logical_partitioning(
                    nn.initializers.zeros, FC_AXES[1:]
                ),
                name="fc",
            )(pooled)
            self.sow("intermediates", "fc_logits", logits)
        if self.frozen:
            grid = jax.lax.stop_gradient(grid)
            pooled = jax.lax.stop_gradient(pooled)
        return grid, pooled
