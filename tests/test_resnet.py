"""The Flax ResNet against PyTorch references (torchvision layout, transformers).

Each parity test draws random weights AND random BatchNorm running statistics
in PyTorch, converts them with jml_jax.convert.resnet, and compares outputs at
fixed tolerances.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import flax.linen as nn  # noqa: E402

from jml_jax.convert.common import strict_merge  # noqa: E402
from jml_jax.convert.resnet import (  # noqa: E402
    hf_resnet_state_to_flat,
    torchvision_state_to_flat,
)
from jml_jax.models.resnet import RESNET_BLOCKS, ResNet, TorchBatchNorm, max_pool_3x3_s2  # noqa: E402
from helpers.torch_resnet_reference import (  # noqa: E402
    BasicBlock,
    Bottleneck,
    TorchResNet,
    numpy_state,
    randomize_,
)

ATOL = 1e-4  # parity of outputs (float32, different summation order)
STATS_TOL = 1e-5  # updated running statistics


@pytest.fixture(autouse=True)
def _highest_precision():
    # On GPU/TPU the default matmul/conv precision is TF32/bf16-ish.
    with jax.default_matmul_precision("highest"):
        yield


def _variables(module, flat, unrecognised=()):
    expected = nn.meta.unbox(
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    )
    return strict_merge(expected, flat, source="test", unrecognised=unrecognised)


def _random_variables(module, seed):
    """Random float32 variables from the module's abstract tree (no jax.random:
    compiling its kernels for every shape costs more than these tests)."""
    rng = np.random.default_rng(seed)
    shapes = nn.meta.unbox(
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    )

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return 0.1 * rng.standard_normal(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _apply(module, variables, x, *, train=False, mutable=False):
    """module.apply under jit: one compile is cheaper than op-by-op dispatch."""
    mutable = tuple(mutable) if isinstance(mutable, list) else mutable
    fn = jax.jit(lambda v, x: module.apply(v, x, train=train, mutable=mutable))
    return fn(variables, x)


def _nhwc(seed, batch, size):
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)


def _images(seed, batch, size):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size), np.float32)


def _torch_grid(feature_map):
    """[B, C, h, w] -> [B, h*w, C] row-major (JML: view(B, C, 49).permute(0, 2, 1))."""
    b, c, h, w = feature_map.shape
    return feature_map.reshape(b, c, h * w).transpose(0, 2, 1)


def _assert_close(ours, ref, atol=ATOL):
    ours = np.asarray(ours, np.float64)
    diff = np.max(np.abs(ours - ref))
    assert diff <= atol, f"max abs diff {diff} > {atol}"


@pytest.mark.parametrize(
    "block, blocks, width, size, depth",
    [
        # JML's shape: [B, 49, 2048] from 224x224, every key pattern of ResNet-152.
        (Bottleneck, (1, 1, 1, 1), 64, 224, 152),
        # ResNet-18 layout (downsample only from layer2) at a small width.
        (BasicBlock, RESNET_BLOCKS[18], 16, 64, 18),
    ],
)
def test_matches_torchvision_layout_in_eval_mode(block, blocks, width, size, depth):
    ref = randomize_(TorchResNet(block, blocks, width=width), seed=1).eval()
    x = _images(2, 2, size)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    module = ResNet(depth=depth, blocks=blocks, width=width)
    flat, unrec = torchvision_state_to_flat(numpy_state(ref))
    variables = _variables(module, flat, unrec)
    grid, pooled = _apply(module, variables, x.transpose(0, 2, 3, 1))
    hw = want.shape[2] * want.shape[3]
    assert grid.shape == (2, hw, module.out_features)
    if size == 224:
        assert grid.shape == (2, 49, 2048)
    _assert_close(grid, _torch_grid(want))
    _assert_close(pooled, want.mean(axis=(2, 3)))


def _hf_model(layer_type, depths, width, seed):
    transformers = pytest.importorskip("transformers")
    exp = 4 if layer_type == "bottleneck" else 1
    config = transformers.ResNetConfig(
        embedding_size=width,
        hidden_sizes=[width * exp * 2**i for i in range(4)],
        depths=list(depths),
        layer_type=layer_type,
    )
    model = transformers.ResNetModel(config)
    return randomize_(model, seed).eval(), config


@pytest.mark.parametrize(
    "layer_type, depths, depth",
    [("bottleneck", (1, 2, 1, 1), 50), ("basic", (2, 1, 1, 1), 18)],
)
def test_matches_transformers_resnet_in_eval_mode(layer_type, depths, depth):
    hf, config = _hf_model(layer_type, depths, width=16, seed=3)
    x = _images(4, 2, 64)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(x))
    flat, unrec = hf_resnet_state_to_flat(numpy_state(hf), config)
    module = ResNet(depth=depth, blocks=depths, width=16)
    variables = _variables(module, flat, unrec)
    grid, pooled = _apply(module, variables, x.transpose(0, 2, 3, 1))
    _assert_close(grid, _torch_grid(out.last_hidden_state.numpy()))
    _assert_close(pooled, out.pooler_output.numpy()[:, :, 0, 0])


def test_train_mode_uses_batch_stats_and_updates_running_stats_like_torch():
    blocks = (1, 2, 1, 1)
    ref = randomize_(TorchResNet(Bottleneck, blocks, width=16), seed=5).train()
    state = numpy_state(ref)
    x = _images(6, 3, 64)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    after = numpy_state(ref)

    module = ResNet(depth=50, blocks=blocks, width=16)
    flat, unrec = torchvision_state_to_flat(state)
    variables = _variables(module, flat, unrec)
    (grid, _), updates = _apply(
        module, variables, x.transpose(0, 2, 3, 1), train=True, mutable=["batch_stats"]
    )
    _assert_close(grid, _torch_grid(want))

    want_flat, _ = torchvision_state_to_flat(after)
    got = {
        "/".join(str(getattr(p, "key", p)) for p in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path({"batch_stats": updates["batch_stats"]})
    }
    stats = [k for k in want_flat if k.startswith("batch_stats/")]
    assert sorted(got) == sorted(stats)
    for key in stats:
        np.testing.assert_allclose(
            got[key], want_flat[key], rtol=STATS_TOL, atol=STATS_TOL, err_msg=key
        )
        # The update really happened (random start values differ from the result).
        assert not np.allclose(got[key], flat[key]), key


@pytest.mark.parametrize("size", [(9, 9), (8, 8), (7, 10)])
def test_max_pool_values_and_gradient_match_torch_with_ties(size):
    # Integer-valued input: most windows hold several equal maxima, and torch
    # gives the whole gradient to the first one (row-major) of each window.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(2, *size, 3)).astype(np.float32)
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 3, stride=2, padding=1)
    g = rng.normal(size=yt.shape).astype(np.float32)
    (yt * torch.tensor(g)).sum().backward()
    g_nhwc = jnp.asarray(g).transpose(0, 2, 3, 1)
    y, vjp = jax.vjp(max_pool_3x3_s2, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(np.asarray(vjp(g_nhwc)[0]), xt.grad.permute(0, 2, 3, 1).numpy())


def test_max_pool_propagates_nan():
    x = np.ones((1, 6, 6, 1), np.float32)
    x[0, 0, 0, 0] = np.nan
    y = np.asarray(max_pool_3x3_s2(jnp.asarray(x)))[0, :, :, 0]
    assert np.isnan(y[0, 0]) and not np.isnan(y[1:, :]).any() and not np.isnan(y[:, 1:]).any()


def test_train_mode_needs_mutable_batch_stats():
    module = ResNet(depth=18, blocks=(1, 1, 1, 1), width=8)
    x = _nhwc(0, 2, 64)
    variables = _random_variables(module, 0)
    with pytest.raises(Exception, match="batch_stats"):
        _apply(module, variables, x, train=True)


def test_batchnorm_refuses_single_value_per_channel_in_train_mode():
    bn = TorchBatchNorm(use_running_average=False)
    variables = {"params": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
                 "batch_stats": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn.apply(variables, jnp.ones((1, 1, 1, 4)), mutable=["batch_stats"])


def test_frozen_stops_gradients_and_keeps_running_stats_in_train_mode():
    module = ResNet(depth=50, blocks=(1, 1, 1, 1), width=8, frozen=True)
    x = _nhwc(1, 2, 64)
    variables = _random_variables(module, 0)
    stats = variables["batch_stats"]

    def loss(params):
        (grid, pooled), upd = module.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(grid**2) + jnp.sum(pooled), upd

    grads, upd = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    for g in jax.tree.leaves(grads):
        assert np.all(np.asarray(g) == 0.0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), upd["batch_stats"], stats)
    # And it really is eval mode: identical to train=False, not to batch stats.
    frozen_vars = {"params": variables["params"], "batch_stats": stats}
    eval_grid, _ = _apply(module, frozen_vars, x)
    train_grid, _ = _apply(module, frozen_vars, x, train=True)  # no mutable needed
    np.testing.assert_array_equal(np.asarray(train_grid), np.asarray(eval_grid))
    live = ResNet(depth=50, blocks=(1, 1, 1, 1), width=8)
    (batch_grid, _), _ = _apply(live, frozen_vars, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(np.asarray(batch_grid), np.asarray(eval_grid))


def test_unfrozen_has_nonzero_gradients():
    module = ResNet(depth=18, blocks=(1, 1, 1, 1), width=8)
    x = _nhwc(1, 2, 64)
    variables = _random_variables(module, 0)

    def loss(params):
        return jnp.sum(module.apply({**variables, "params": params}, x)[0])

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert np.any(np.asarray(grads["conv1"]["kernel"]) != 0)


def test_bfloat16_compute_keeps_float32_params():
    module = ResNet(depth=50, blocks=(1, 1, 1, 1), width=8, dtype=jnp.bfloat16)
    x = _nhwc(1, 2, 32)
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.asarray(x)))
    for leaf in jax.tree.leaves(nn.meta.unbox(abstract)):
        assert leaf.dtype == jnp.float32
    variables = _random_variables(module, 0)
    (grid, pooled), upd = _apply(module, variables, x, train=True, mutable=["batch_stats"])
    assert grid.dtype == jnp.bfloat16 and pooled.dtype == jnp.bfloat16
    assert grid.shape == (2, 1, 256) and pooled.shape == (2, 256)
    assert np.all(np.isfinite(np.asarray(grid, np.float32)))
    for leaf in jax.tree.leaves(upd):
        assert leaf.dtype == jnp.float32
    f32 = ResNet(depth=50, blocks=(1, 1, 1, 1), width=8)
    ref, _ = _apply(f32, variables, x)
    low, _ = _apply(module, variables, x)
    # bf16 keeps ~3 significant digits; a layout error would be far off.
    scale = float(jnp.max(jnp.abs(ref)))
    assert float(jnp.max(jnp.abs(low.astype(jnp.float32) - ref))) < 0.1 * scale


def test_params_carry_logical_axis_names():
    module = ResNet(depth=50, blocks=(1, 1, 1, 1), width=8, num_classes=3)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    p, s = boxed["params"], boxed["batch_stats"]
    assert p["layer2_0"]["conv2"]["kernel"].names == ("conv_h", "conv_w", "conv_in", "conv_out")
    assert p["layer1_0"]["downsample_bn"]["scale"].names == ("norm",)
    assert s["bn1"]["var"].names == ("norm",)
    assert p["fc"]["kernel"].names == ("img_embed", None)


def test_module_tree_mirrors_torchvision_names():
    module = ResNet(depth=50, blocks=(1, 2, 1, 1), width=8)
    params = _random_variables(module, 0)["params"]
    assert sorted(params) == ["bn1", "conv1", "layer1_0", "layer2_0", "layer2_1",
                              "layer3_0", "layer4_0"]
    # Bottleneck: block 0 of layer1 has a downsample too (8 != 32); layer2_1 has none.
    assert "downsample_conv" in params["layer1_0"]
    assert "downsample_conv" not in params["layer2_1"]
    assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
    basic = ResNet(depth=18, blocks=(1, 1, 1, 1), width=8)
    bparams = _random_variables(basic, 0)["params"]
    assert "downsample_conv" not in bparams["layer1_0"]
    assert sorted(bparams["layer2_0"]) == ["bn1", "bn2", "conv1", "conv2",
                                           "downsample_bn", "downsample_conv"]


def test_rejects_non_nhwc_images():
    module = ResNet(depth=18, blocks=(1, 1, 1, 1), width=8)
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64))))


def test_fc_head_does_not_change_outputs_and_matches_torch_logits():
    blocks = (1, 1, 1, 1)
    ref = randomize_(TorchResNet(Bottleneck, blocks, width=8, num_classes=5), seed=7).eval()
    x = _images(8, 2, 64)
    with torch.no_grad():
        want_logits = ref.logits(torch.from_numpy(x)).numpy()
    flat, unrec = torchvision_state_to_flat(numpy_state(ref))
    with_fc = ResNet(depth=50, blocks=blocks, width=8, num_classes=5)
    variables = _variables(with_fc, flat, unrec)
    (grid, pooled), inter = _apply(
        with_fc, variables, x.transpose(0, 2, 3, 1), mutable=["intermediates"]
    )
    _assert_close(inter["intermediates"]["fc_logits"][0], want_logits)
    no_fc = ResNet(depth=50, blocks=blocks, width=8)
    trunk = {"params": {k: v for k, v in variables["params"].items() if k != "fc"},
             "batch_stats": variables["batch_stats"]}
    grid2, pooled2 = _apply(no_fc, trunk, x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(grid2))
    np.testing.assert_array_equal(np.asarray(pooled), np.asarray(pooled2))


def test_batch_sharded_train_step_uses_global_batch_statistics():
    # With the batch split over devices, BatchNorm must still see the whole
    # (global) batch, as one device with the full batch would.
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    module = ResNet(depth=50, blocks=(1, 1, 1, 1), width=8)
    variables = _random_variables(module, 0)
    x = _nhwc(2, 8, 32)

    def step(v, x):
        return module.apply(v, x, train=True, mutable=["batch_stats"])

    (want_grid, _), want_upd = jax.jit(step)(variables, x)
    sharded = jax.jit(
        step,
        in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
    )
    (grid, _), upd = sharded(variables, jax.device_put(x, NamedSharding(mesh, P("data"))))
    assert len(grid.sharding.device_set) == 8
    # Only the summation order differs (float32 reductions split over devices);
    # per-device statistics would be off by ~0.1.
    _assert_close(grid, np.asarray(want_grid))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=STATS_TOL, rtol=STATS_TOL
        ),
        upd,
        want_upd,
    )


@pytest.mark.parametrize("updates", [1, 2])
def test_grouped_batchnorm_is_torch_on_each_group_in_turn(updates):
    """groups=3: each group of 2 rows normalised alone and the running statistics
    updated group after group, ``updates`` times each (2 = the original's
    extraction + train forwards, §10.8), as torch's BatchNorm2d does."""
    groups, rows, c = 3, 2, 5
    rng = np.random.default_rng(11)
    x = rng.standard_normal((groups * rows, 4, 3, c)).astype(np.float32) * 2.0 + 0.5
    mean0 = rng.standard_normal(c).astype(np.float32)
    var0 = rng.uniform(0.5, 1.5, c).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)

    ref = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1).train()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(scale))
        ref.bias.copy_(torch.from_numpy(bias))
        ref.running_mean.copy_(torch.from_numpy(mean0))
        ref.running_var.copy_(torch.from_numpy(var0))
        want = []
        for g in range(groups):
            xg = torch.from_numpy(x[g * rows:(g + 1) * rows]).permute(0, 3, 1, 2)
            for _ in range(updates):
                y = ref(xg)
            want.append(y.permute(0, 2, 3, 1).numpy())
    want = np.concatenate(want)

    bn = TorchBatchNorm(use_running_average=False, updates=updates)
    variables = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
                 "batch_stats": {"mean": jnp.asarray(mean0), "var": jnp.asarray(var0)}}
    y, upd = jax.jit(lambda v, x: bn.apply(v, x, groups, mutable=["batch_stats"]))(variables, x)
    _assert_close(y, want, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], ref.running_mean.numpy(),
                               rtol=STATS_TOL, atol=STATS_TOL)
    np.testing.assert_allclose(upd["batch_stats"]["var"], ref.running_var.numpy(),
                               rtol=STATS_TOL, atol=STATS_TOL)
    # One group over all 6 rows would normalise differently.
    whole, _ = bn.apply(variables, x, mutable=["batch_stats"])
    assert np.max(np.abs(np.asarray(whole) - want)) > 1e-2


def test_batchnorm_groups_must_divide_the_batch_and_updates_be_positive():
    variables = {"params": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
                 "batch_stats": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}
    with pytest.raises(ValueError, match="does not split into 4 BatchNorm groups"):
        TorchBatchNorm(use_running_average=False).apply(
            variables, jnp.ones((6, 2, 2, 4)), 4, mutable=["batch_stats"])
    with pytest.raises(ValueError, match="updates per group must be >= 1"):
        TorchBatchNorm(use_running_average=False, updates=0).apply(
            variables, jnp.ones((6, 2, 2, 4)), 2, mutable=["batch_stats"])
    # Eval mode ignores groups: the running statistics serve every row.
    y = TorchBatchNorm().apply(variables, jnp.full((6, 2, 2, 4), 3.0), 4)
    np.testing.assert_allclose(y, 3.0 / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_resnet_groups_equal_calls_on_each_group_in_turn():
    module = ResNet(depth=50, blocks=(1, 1, 1, 1), width=8, bn_updates=2)
    variables = _random_variables(module, 3)
    groups, rows = 4, 2
    # 64 pixels: 2x2 values per channel and group in layer4 (at 1x1, a group of
    # 2 rows normalises 2 values and magnifies float reordering).
    x = _nhwc(4, groups * rows, 64)

    def call(v, x, groups):
        return module.apply(v, x, train=True, groups=groups, mutable=["batch_stats"])

    (grid, pooled), upd = jax.jit(call, static_argnums=2)(variables, x, groups)
    stats, grids = variables["batch_stats"], []
    for g in range(groups):
        (grid_g, _), new = jax.jit(call, static_argnums=2)(
            {"params": variables["params"], "batch_stats": stats}, x[g * rows:(g + 1) * rows], 1)
        stats = new["batch_stats"]
        grids.append(np.asarray(grid_g))
    _assert_close(grid, np.concatenate(grids))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=STATS_TOL, atol=STATS_TOL),
                 upd["batch_stats"], stats)
