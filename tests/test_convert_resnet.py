"""ResNet checkpoint conversion: key tables, strict errors, files, the JML fixture."""

import json

import numpy as np
import pytest

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jml_jax.convert.common import CheckpointMismatchError  # noqa: E402
from jml_jax.convert.resnet import (  # noqa: E402
    check_hf_resnet_config,
    flat_to_torchvision_state,
    hf_resnet_state_to_flat,
    load_resnet_checkpoint,
    timm_state_to_flat,
    torchvision_state_to_flat,
)

MAIN = "resnet152.resnet."
REL = "pretrain_model.mybert.pre_resnet.resnet."
ATOL = RTOL = 1e-4  # fixtures/README.md §1.6


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _apply(module, variables, x, *, train=False, mutable=False):
    mutable = tuple(mutable) if isinstance(mutable, list) else mutable
    return jax.jit(lambda v, x: module.apply(v, x, train=train, mutable=mutable))(variables, x)


@pytest.fixture(scope="module")
def fixture_arrays(fixtures_dir):
    with np.load(fixtures_dir / "orig_tiny_model.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def fixture_state(fixture_arrays):
    return {k: v for k, v in fixture_arrays.items() if "/" not in k}


def _small_torch_resnet(num_classes=None, seed=11):
    pytest.importorskip("torch")
    from helpers.torch_resnet_reference import Bottleneck, TorchResNet, randomize_

    return randomize_(TorchResNet(Bottleneck, (1, 2, 1, 1), width=8, num_classes=num_classes), seed)


def _state(model):
    from helpers.torch_resnet_reference import numpy_state

    return numpy_state(model)


# ----------------------------------------------------------------- key tables


def test_torchvision_keys_map_to_our_tree_with_transposes():
    rng = np.random.default_rng(0)
    state = {
        "conv1.weight": rng.standard_normal((8, 3, 7, 7)).astype(np.float32),
        "bn1.weight": np.arange(8, dtype=np.float32),
        "bn1.bias": np.arange(8, dtype=np.float32) + 10,
        "bn1.running_mean": np.arange(8, dtype=np.float32) + 20,
        "bn1.running_var": np.arange(8, dtype=np.float32) + 30,
        "bn1.num_batches_tracked": np.array(7, np.int64),
        "layer3.12.downsample.0.weight": rng.standard_normal((32, 16, 1, 1)).astype(np.float32),
        "layer3.12.downsample.1.running_var": np.ones(32, np.float32),
        "fc.weight": rng.standard_normal((5, 64)).astype(np.float32),
        "fc.bias": np.zeros(5, np.float32),
    }
    flat, unrec = torchvision_state_to_flat(state)
    assert unrec == []
    assert sorted(flat) == sorted([
        "params/conv1/kernel", "params/bn1/scale", "params/bn1/bias",
        "batch_stats/bn1/mean", "batch_stats/bn1/var",
        "params/layer3_12/downsample_conv/kernel", "batch_stats/layer3_12/downsample_bn/var",
        "params/fc/kernel", "params/fc/bias",
    ])  # fmt: skip
    kernel = state["conv1.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    np.testing.assert_array_equal(flat["params/conv1/kernel"], kernel)
    np.testing.assert_array_equal(flat["params/bn1/bias"], state["bn1.bias"])
    np.testing.assert_array_equal(flat["batch_stats/bn1/mean"], state["bn1.running_mean"])
    np.testing.assert_array_equal(flat["batch_stats/bn1/var"], state["bn1.running_var"])
    np.testing.assert_array_equal(flat["params/fc/kernel"], state["fc.weight"].T)


def test_prefix_ignores_outside_keys_and_reports_unknown_inside():
    state = {
        MAIN + "conv1.weight": np.zeros((8, 3, 7, 7), np.float32),
        MAIN + "layer1.0.conv9.weight": np.zeros((8, 8, 1, 1), np.float32),
        "align_res.weight": np.zeros((4, 4), np.float32),
        REL + "conv1.weight": np.zeros((8, 3, 7, 7), np.float32),
    }
    flat, unrec = torchvision_state_to_flat(state, prefix=MAIN)
    assert list(flat) == ["params/conv1/kernel"]
    assert unrec == [MAIN + "layer1.0.conv9.weight"]
    # Without a prefix every key is read, so the prefixed names are all unknown.
    flat_all, unrec_all = torchvision_state_to_flat(state)
    assert flat_all == {} and sorted(unrec_all) == sorted(state)


def test_wrong_rank_names_the_key():
    with pytest.raises(ValueError, match=r"layer2\.0\.conv2\.weight.*4-D"):
        torchvision_state_to_flat({"layer2.0.conv2.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(ValueError, match=r"bn1\.running_var.*1-D"):
        torchvision_state_to_flat({"bn1.running_var": np.zeros((4, 1), np.float32)})


def test_round_trip_is_bit_exact_and_keeps_torchvision_order():
    state = _state(_small_torch_resnet(num_classes=3))
    flat, unrec = torchvision_state_to_flat(state)
    assert unrec == []
    back = flat_to_torchvision_state(flat)
    assert list(back) == list(state)  # same keys, same module order
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert back[key].dtype == np.int64 and back[key].shape == () and back[key] == 0
        else:
            assert back[key].dtype == value.dtype
            np.testing.assert_array_equal(back[key], value, err_msg=key)
    # The nested variables tree is accepted as well.
    from jml_jax.convert.common import unflatten_tree

    nested = flat_to_torchvision_state(unflatten_tree(flat), prefix=MAIN)
    assert list(nested) == [MAIN + k for k in state]


def test_inverse_rejects_foreign_paths():
    with pytest.raises(ValueError, match="params/encoder/layer_0/kernel"):
        flat_to_torchvision_state({"params/encoder/layer_0/kernel": np.zeros((2, 2))})


def test_timm_plain_resnet_reuses_torchvision_names_and_variants_are_refused():
    state = _state(_small_torch_resnet())
    flat_tv, _ = torchvision_state_to_flat(state)
    flat_timm, unrec = timm_state_to_flat(state)
    assert unrec == [] and sorted(flat_timm) == sorted(flat_tv)
    deep_stem = {"conv1.0.weight": np.zeros((32, 3, 3, 3), np.float32), **state}
    with pytest.raises(ValueError, match=r"conv1\.0\.weight"):
        timm_state_to_flat(deep_stem)
    se = {"layer1.0.se.fc1.weight": np.zeros((4, 32, 1, 1), np.float32), **state}
    with pytest.raises(ValueError, match=r"layer1\.0\.se\.fc1\.weight"):
        timm_state_to_flat(se)


def test_hf_config_with_another_layout_is_refused():
    base = dict(embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[3, 4, 6, 3],
                layer_type="bottleneck", hidden_act="relu", num_channels=3)
    assert check_hf_resnet_config(base) == (50, (3, 4, 6, 3), 16)
    with pytest.raises(ValueError, match="downsample_in_bottleneck"):
        check_hf_resnet_config({**base, "downsample_in_bottleneck": True})
    with pytest.raises(ValueError, match="downsample_in_first_stage.*hidden_sizes"):
        check_hf_resnet_config({**base, "hidden_sizes": [64, 96, 256, 512],
                                "downsample_in_first_stage": True})
    with pytest.raises(ValueError, match="hidden_act"):
        check_hf_resnet_config({**base, "hidden_act": "gelu"})


def test_hf_keys_map_like_torchvision_keys():
    transformers = pytest.importorskip("transformers")
    from helpers.torch_resnet_reference import numpy_state

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[32, 64, 128, 256],
                                       depths=[1, 2, 1, 1], num_labels=3)
    hf = transformers.ResNetForImageClassification(config)
    flat, unrec = hf_resnet_state_to_flat(numpy_state(hf), config)
    assert unrec == []
    flat_tv, _ = torchvision_state_to_flat(_state(_small_torch_resnet(num_classes=3)))
    assert sorted(flat) == sorted(flat_tv)
    for key in flat:
        assert flat[key].shape == flat_tv[key].shape, key


# ----------------------------------------------------------------- loading files


def _corrupt(state):
    state = dict(state)
    del state["layer1.0.bn1.running_var"]  # missing
    state["layer2.0.conv2.weight"] = state["layer2.0.conv2.weight"][:, :-1]  # wrong shape
    state["layer1.0.conv4.weight"] = np.zeros((8, 8, 1, 1), np.float32)  # unknown
    return state


def test_mismatch_names_missing_unexpected_and_wrong_shape_at_once(tmp_path):
    from safetensors.numpy import save_file

    state = {k: v for k, v in _state(_small_torch_resnet()).items()
             if not k.endswith("num_batches_tracked")}
    save_file(_corrupt(state), str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        load_resnet_checkpoint(tmp_path / "bad.safetensors")
    e = err.value
    assert e.missing == ["batch_stats/layer1_0/bn1/var"]
    assert e.unexpected == ["layer1.0.conv4.weight"]
    assert [m[0] for m in e.mismatched] == ["params/layer2_0/conv2/kernel"]
    msg = str(e)
    for name in ("batch_stats/layer1_0/bn1/var", "layer1.0.conv4.weight",
                 "params/layer2_0/conv2/kernel"):
        assert name in msg


def test_given_depth_that_does_not_fit_fails_strictly(tmp_path):
    from safetensors.numpy import save_file

    save_file(_state(_small_torch_resnet()), str(tmp_path / "r.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_resnet_checkpoint(tmp_path / "r.safetensors", depth=50)  # (3,4,6,3) wanted


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "hf_folder"])
def test_load_checkpoint_files_reproduce_pytorch(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64), np.float32)
    if fmt == "hf_folder":
        transformers = pytest.importorskip("transformers")
        from helpers.torch_resnet_reference import randomize_

        config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[32, 64, 128, 256],
                                           depths=[1, 2, 1, 1], num_labels=3)
        ref = randomize_(transformers.ResNetForImageClassification(config), 12).eval()
        ref.save_pretrained(tmp_path / "hf")
        path = tmp_path / "hf"
        assert json.loads((path / "config.json").read_text())["model_type"] == "resnet"
        with torch.no_grad():
            out = ref(pixel_values=torch.from_numpy(x), output_hidden_states=True)
        want_map, want_logits = out.hidden_states[-1].numpy(), out.logits.numpy()
    else:
        ref = _small_torch_resnet(num_classes=3).eval()
        if fmt == "pth":
            path = tmp_path / "r.pth"
            torch.save(ref.state_dict(), path)
        else:
            from safetensors.numpy import save_file

            path = tmp_path / "r.safetensors"
            save_file(_state(ref), str(path))
        with torch.no_grad():
            want_map = ref(torch.from_numpy(x)).numpy()
            want_logits = ref.logits(torch.from_numpy(x)).numpy()
    module, variables = load_resnet_checkpoint(path)
    assert (module.depth, tuple(module.blocks), module.width, module.num_classes) == (
        50, (1, 2, 1, 1), 8, 3)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32
               for v in jax.tree.leaves(variables))
    (grid, pooled), inter = _apply(
        module, variables, x.transpose(0, 2, 3, 1), mutable=["intermediates"]
    )
    b, c, h, w = want_map.shape
    np.testing.assert_allclose(grid, want_map.reshape(b, c, h * w).transpose(0, 2, 1),
                               atol=ATOL, rtol=0)
    np.testing.assert_allclose(inter["intermediates"]["fc_logits"][0], want_logits,
                               atol=ATOL, rtol=0)


def test_include_fc_false_drops_fc(tmp_path):
    from safetensors.numpy import save_file

    save_file(_state(_small_torch_resnet(num_classes=3)), str(tmp_path / "r.safetensors"))
    module, variables = load_resnet_checkpoint(tmp_path / "r.safetensors", include_fc=False)
    assert module.num_classes is None and "fc" not in variables["params"]


def test_unknown_file_type_is_refused(tmp_path):
    (tmp_path / "r.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        load_resnet_checkpoint(tmp_path / "r.npz")
    with pytest.raises(FileNotFoundError):
        load_resnet_checkpoint(tmp_path / "absent.pth")


# ----------------------------------------------------------------- original JML fixture


def _fixture_resnet(fixture_state, prefix):
    from jml_jax.convert.common import strict_merge
    from flax.linen import meta
    from jml_jax.models.resnet import ResNet

    flat, unrec = torchvision_state_to_flat(fixture_state, prefix=prefix)
    module = ResNet(depth=152, blocks=(1, 1, 1, 1), num_classes=10)
    expected = meta.unbox(jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
    return module, strict_merge(expected, flat, source=prefix, unrecognised=unrec), flat


@pytest.mark.parametrize("prefix", [MAIN, REL])
def test_fixture_resnets_convert_every_key_and_round_trip(fixture_state, prefix):
    _, _, flat = _fixture_resnet(fixture_state, prefix)
    back = flat_to_torchvision_state(flat, prefix=prefix)
    ours = [k for k in fixture_state if k.startswith(prefix)]
    assert list(back) == ours  # every key consumed, same order
    for key in ours:
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], fixture_state[key], err_msg=key)


@pytest.mark.parametrize("prefix, att", [(MAIN, "inter/main_resnet_att"),
                                         (REL, "inter/rel_resnet_att")])
def test_fixture_resnets_reproduce_original_grids(fixture_arrays, fixture_state, prefix, att):
    module, variables, _ = _fixture_resnet(fixture_state, prefix)
    image = fixture_arrays["input/image"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    grid, pooled = _apply(module, variables, image)
    want = fixture_arrays[att]
    assert grid.shape == (3, 49, 2048)
    np.testing.assert_allclose(grid, want.reshape(3, 2048, 49).transpose(0, 2, 1),
                               atol=ATOL, rtol=RTOL)
    if prefix == MAIN:
        np.testing.assert_allclose(pooled, fixture_arrays["inter/main_resnet_fc"],
                                   atol=ATOL, rtol=RTOL)


def test_fixture_main_resnet_train_forward_updates_running_stats(fixture_arrays, fixture_state):
    module, variables, _ = _fixture_resnet(fixture_state, MAIN)
    image = fixture_arrays["input/image"].transpose(0, 2, 3, 1)
    _, updates = _apply(module, variables, image, train=True, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    after = "bn_train/after/" + MAIN
    for ours, theirs in [(stats["bn1"], "bn1"), (stats["layer4_0"]["bn3"], "layer4.0.bn3")]:
        np.testing.assert_allclose(ours["mean"], fixture_arrays[f"{after}{theirs}.running_mean"],
                                   atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(ours["var"], fixture_arrays[f"{after}{theirs}.running_var"],
                                   atol=ATOL, rtol=RTOL)
        # ... and they moved away from the checkpoint's values.
        assert not np.allclose(ours["var"], fixture_state[f"{MAIN}{theirs}.running_var"])


def test_load_checkpoint_with_prefix_reads_one_resnet_of_a_full_jml_state(
    tmp_path, fixture_state
):
    from safetensors.numpy import save_file

    save_file(fixture_state, str(tmp_path / "jml.safetensors"))  # BERTs, heads and all
    module, variables = load_resnet_checkpoint(
        tmp_path / "jml.safetensors", depth=152, blocks=(1, 1, 1, 1), prefix=REL
    )
    assert module.num_classes == 10
    _, want, _ = _fixture_resnet(fixture_state, REL)
    jax.tree.map(np.testing.assert_array_equal, variables, want)
