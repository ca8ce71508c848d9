"""launch/convert_checkpoint.py `resnet` and `jml`: PyTorch checkpoints -> Orbax folders.

Each conversion must write a folder that jml_jax.checkpointing.restore_params
reads back to exactly the converter's output, and that the model factory's
loaders (model.resnet_init, model.relation_init) accept for the model the
config builds.
"""

from __future__ import annotations

import numpy as np
import pytest

from jml_jax import model_factory, weights
from jml_jax.checkpointing import CheckpointError, restore_params
from jml_jax.convert import original
from jml_jax.convert.common import CheckpointMismatchError, flatten_tree
from conftest import REPO_ROOT
from launch import convert_checkpoint
from launch.common import load_config

DEMO = str(REPO_ROOT / "configs" / "demo.py")

# The fixture's model is configs/demo.py with the fixture's vocabulary and a
# torchvision-width ResNet (fixtures README §1.1).
FIXTURE_OVERRIDES = ["--config.model.bert_vocab_size=100", "--config.model.resnet_width=64"]


def _assert_same_tree(restored, expected):
    got = {k: np.asarray(v) for k, v in flatten_tree(restored).items()}
    want = flatten_tree(expected)
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], np.asarray(value), err_msg=key)


@pytest.fixture(scope="module")
def fixture_state(fixtures_dir):
    return original.load_original_state(fixtures_dir / "orig_tiny_model.npz")[0]


@pytest.fixture(scope="module")
def fixture_model():
    config = load_config(DEMO, FIXTURE_OVERRIDES)
    model = model_factory.build_model(config)
    return config, model, model_factory.abstract_variables(model, config)


# ----------------------------------------------------------------------------- resnet


def test_resnet_torchvision_checkpoint_to_orbax(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from helpers.torch_resnet_reference import Bottleneck, TorchResNet, randomize_

    from jml_jax.convert.resnet import load_resnet_checkpoint

    net = randomize_(TorchResNet(Bottleneck, [1, 1, 1, 1], width=8, num_classes=10), seed=3)
    src = tmp_path / "resnet.pth"
    torch.save(net.state_dict(), src)
    out = tmp_path / "out"
    assert convert_checkpoint.main(["resnet", "--src", str(src), "--out", str(out)]) == 0
    assert f"model.resnet_init={out}" in capsys.readouterr().out

    _, expected = load_resnet_checkpoint(src, include_fc=False)
    restored = restore_params(out / "variables")
    _assert_same_tree(restored, expected)
    assert "fc" not in restored["params"]
    # torch OIHW -> our HWIO, the running statistics into batch_stats.
    np.testing.assert_array_equal(
        np.asarray(restored["params"]["conv1"]["kernel"]),
        net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        np.asarray(restored["batch_stats"]["bn1"]["var"]), net.bn1.running_var.numpy()
    )

    # What model.resnet_init=OUT gives the demo model (same architecture).
    config = load_config(DEMO)
    model = model_factory.build_model(config)
    abstract = model_factory.abstract_variables(model, config)
    wanted = {"params": abstract["params"]["resnet"], "batch_stats": abstract["batch_stats"]["resnet"]}
    loaded = weights.load_resnet(str(out), model.config, wanted)
    _assert_same_tree(loaded, expected)


def test_resnet_existing_output_needs_overwrite(tmp_path):
    torch = pytest.importorskip("torch")
    from helpers.torch_resnet_reference import BasicBlock, TorchResNet

    src = tmp_path / "resnet18ish.pth"
    torch.save(TorchResNet(BasicBlock, [1, 1, 1, 1], width=4).state_dict(), src)
    args = ["resnet", "--src", str(src), "--out", str(tmp_path / "out")]
    assert convert_checkpoint.main(args) == 0
    with pytest.raises(CheckpointError, match="already holds an artifact"):
        convert_checkpoint.main(args)
    assert convert_checkpoint.main(args + ["--overwrite"]) == 0


# ----------------------------------------------------------------------------- jml


def test_jml_npz_to_orbax_equals_converter(fixtures_dir, fixture_state, fixture_model, tmp_path, capsys):
    config, model, abstract = fixture_model
    out = tmp_path / "out"
    src = fixtures_dir / "orig_tiny_model.npz"
    rc = convert_checkpoint.main(
        ["jml", "--src", str(src), "--out", str(out), "--config", DEMO, *FIXTURE_OVERRIDES]
    )
    assert rc == 0
    expected, report = original.convert_original(fixture_state, model.config, abstract, source=str(src))
    assert report.summary() in capsys.readouterr().out
    _assert_same_tree(restore_params(out / "variables"), expected)


def test_jml_torch_checkpoint_pth_tar(fixture_state, fixture_model, tmp_path):
    torch = pytest.importorskip("torch")
    config, model, abstract = fixture_model
    src = tmp_path / "checkpoint.pth.tar"
    # The authors' layout: {'model': state_dict, 'optimizer': ..., 'step': ...}.
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in fixture_state.items()},
                "optimizer": {}, "step": 12}, src)
    out = tmp_path / "out"
    convert_checkpoint.main(["jml", "--src", str(src), "--out", str(out), "--config", DEMO,
                             *FIXTURE_OVERRIDES])
    expected, _ = original.convert_original(fixture_state, model.config, abstract, source="npz")
    _assert_same_tree(restore_params(out / "variables"), expected)


def test_jml_relation_checkpoint_writes_relation_subtree(fixture_state, fixture_model, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    config, model, abstract = fixture_model
    prefix = "pretrain_model."
    rel_state = {k[len(prefix):]: v for k, v in fixture_state.items() if k.startswith(prefix)}
    src = tmp_path / "rel_pre_soft_new"
    torch.save({"model_rel": {k: torch.from_numpy(np.array(v)) for k, v in rel_state.items()}}, src)
    out = tmp_path / "out"
    convert_checkpoint.main(["jml", "--src", str(src), "--out", str(out), "--config", DEMO,
                             *FIXTURE_OVERRIDES])
    assert f"model.relation_init={out}" in capsys.readouterr().out
    assert weights.read_artifact(out)["kind"] == "relation"

    # The joint checkpoint's relation part is the same module (§2.4 branch 1).
    joint, _ = original.convert_original(fixture_state, model.config, abstract, source="npz")
    expected = {c: joint[c]["relation"] for c in ("params", "batch_stats")}
    _assert_same_tree(restore_params(out / "variables"), expected)
    wanted = {c: abstract[c]["relation"] for c in ("params", "batch_stats")}
    _assert_same_tree(weights.load_relation(str(out), model.config, wanted), expected)


def test_jml_config_mismatch_names_the_keys(fixtures_dir, tmp_path):
    # Without the width override the demo's ResNet is 8 wide: every ResNet key mismatches.
    with pytest.raises(CheckpointMismatchError, match="resnet"):
        convert_checkpoint.main(["jml", "--src", str(fixtures_dir / "orig_tiny_model.npz"),
                                 "--out", str(tmp_path / "out"), "--config", DEMO,
                                 "--config.model.bert_vocab_size=100"])
    assert not (tmp_path / "out").exists()


def test_config_overrides_parse_as_for_launch_train(tmp_path):
    with pytest.raises(Exception, match="nope"):
        load_config(DEMO, ["--config.model.nope=1"])
    with pytest.raises(Exception, match="absent.py"):
        load_config(str(REPO_ROOT / "configs" / "absent.py"))
    config = load_config(f"{DEMO}:text_only", ["--config.model.bert=tiny"])
    assert config.model.use_images is False and config.model.bert == "tiny"
    with pytest.raises(SystemExit):  # the converter's parser refuses stray arguments
        convert_checkpoint.main(["resnet", "--src", "x", "--out", str(tmp_path / "o"), "--config.model.bert=tiny"])
