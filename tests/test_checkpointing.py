"""Orbax checkpoints: cross-mesh restore, latest/best bookkeeping, clear errors."""

import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from helpers import toy_model
from jml_jax.checkpointing import (
    BestModel,
    CheckpointError,
    CheckpointStructureError,
    Checkpointer,
    restore_params,
    save_params,
)
from jml_jax.mesh import make_mesh
from jml_jax.train_state import abstract_sharded_state, create_sharded_state

MODEL = toy_model.ToyMLP()


def _mesh(shape):
    return make_mesh(shape, devices=jax.devices()[:1] if shape == (1, 1, 1) else None)


def _state(shape, seed=0):
    """A toy state with non-trivial values everywhere (optimizer moments included)."""
    mesh = _mesh(shape)
    state, _ = create_sharded_state(
        toy_model.init_fn(MODEL), toy_model.make_tx(), mesh, None, jax.random.PRNGKey(seed)
    )
    bump = lambda x: x + 0.25 if jnp.issubdtype(x.dtype, jnp.floating) else x + 1  # noqa: E731
    return state.replace(
        step=jnp.asarray(7, jnp.int32),
        opt_state=jax.tree.map(bump, state.opt_state),
        batch_stats=jax.tree.map(bump, state.batch_stats),
    )


def _target(shape):
    abstract, _ = abstract_sharded_state(toy_model.init_fn(MODEL), toy_model.make_tx(), _mesh(shape), None)
    return abstract


def _assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.mark.parametrize("restore_shape", [(1, 1, 1), (2, 2, 2)])
def test_save_on_8_devices_restore_on_other_meshes(tmp_path, restore_shape):
    state = _state((1, 8, 1))
    assert state.params["up"]["kernel"].sharding.spec == P("fsdp", "tensor")
    metadata = {"config": {"model": "toy", "lr": 0.05, "sizes": (1, 2)}, "data_position": 128}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(7, state, metadata, metrics={"dev/joint_orig/f1": np.float32(0.5)})
        ckpt.wait()
    target = _target(restore_shape)
    with Checkpointer(tmp_path) as ckpt:
        restored, meta = ckpt.restore("latest", target)
    _assert_same(restored, state)
    jax.tree.map(
        lambda x, t: x.sharding.is_equivalent_to(t.sharding, x.ndim) or pytest.fail(str(x.sharding)),
        restored, target,
    )
    assert meta["step"] == 7 and meta["data_position"] == 128
    assert meta["config"] == {"model": "toy", "lr": 0.05, "sizes": [1, 2]}
    assert meta["metrics"] == {"dev/joint_orig/f1": 0.5}


def test_latest_bookkeeping(tmp_path):
    state = _state((1, 1, 1))
    scores = {1: 0.1, 2: 0.5, 3: 0.3, 4: 0.2, 5: 0.4}
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step, f1 in scores.items():
            ckpt.save(step, state, {"data_position": step}, metrics={"dev/joint_orig/f1": f1, "loss": 1.0})
        ckpt.save(6, state, {"data_position": 6}, metrics={"train/loss": 0.3})  # no dev metric
        ckpt.wait()
        assert ckpt.latest_step() == 6
        assert ckpt.all_steps() == [5, 6]  # metrics rank nothing: the best model is best/
    # A restarted run sees the same bookkeeping.
    with Checkpointer(tmp_path, keep=2) as ckpt:
        assert (ckpt.latest_step(), ckpt.all_steps()) == (6, [5, 6])
        _, meta = ckpt.restore(5, _target((1, 1, 1)))
        assert meta["step"] == 5 and meta["metrics"]["dev/joint_orig/f1"] == 0.4
        _, meta = ckpt.restore_or_none(_target((1, 1, 1)))
        assert meta["step"] == 6 and meta["data_position"] == 6
        with pytest.raises(ValueError, match="restore_best"):
            ckpt.restore("best", _target((1, 1, 1)))


def test_best_model_is_the_one_best_folder(tmp_path):
    """`save_best` keeps one model in <workdir>/best, replacing the previous
    one; `restore_best` reads it through the same checks as a resumable step."""
    state = _state((1, 1, 1))
    target = _target((1, 1, 1))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    abstract = {"params": target.params, "batch_stats": target.batch_stats}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save_best(2, variables, {"dev/f1": 0.5})
        bumped = jax.tree.map(lambda x: x + 1, variables)
        ckpt.save_best(4, bumped, {"dev/f1": 0.7})
        ckpt.wait()
    assert sorted(p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()) == ["4"]
    with Checkpointer(tmp_path, create=False) as ckpt:
        restored, meta = ckpt.restore_best(abstract)
    assert meta["step"] == 4 and meta["metrics"] == {"dev/f1": 0.7}
    _assert_same(restored, bumped)
    wrong = {"params": {"other": target.params}, "batch_stats": target.batch_stats}
    with Checkpointer(tmp_path, create=False) as ckpt:
        with pytest.raises(CheckpointStructureError, match="other"):
            ckpt.restore_best(wrong)


def test_async_save_then_wait(tmp_path):
    state = _state((2, 2, 2))
    expected = jax.device_get(state)
    ckpt = Checkpointer(tmp_path, async_save=True)
    assert ckpt.save(1, state, {"data_position": 0})
    # The caller may drop (or donate) the state as soon as save returns.
    del state
    ckpt.wait()
    assert (tmp_path / "checkpoints" / "1" / "commit_success.txt").exists()
    restored, _ = ckpt.restore(1, _target((2, 2, 2)))
    _assert_same(restored, expected)
    ckpt.close()


def test_missing_directory_and_empty_workdir(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory") as err:
        Checkpointer(tmp_path / "nope", create=False)
    assert str(tmp_path / "nope") in str(err.value)
    with Checkpointer(tmp_path / "fresh") as ckpt:
        assert ckpt.restore_or_none(_target((1, 1, 1))) is None
        assert ckpt.latest_step() is None
        with pytest.raises(CheckpointError, match="no checkpoint"):
            ckpt.restore("latest", _target((1, 1, 1)))
        with pytest.raises(CheckpointError, match="no best model"):
            ckpt.restore_best({"params": {}})
    # a folder with neither best/ nor checkpoints/ says nothing was trained there, and stays empty
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint directory: nothing was trained"):
        BestModel(tmp_path / "empty", create=False).restore_best({"params": {}})
    assert list((tmp_path / "empty").iterdir()) == []


def test_partial_checkpoints_are_errors_not_fresh_starts(tmp_path, caplog):
    state = _state((1, 1, 1))
    target = _target((1, 1, 1))
    root = tmp_path / "checkpoints"
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(2, state, {"data_position": 2})
    # A save cut short before its rename, and a step directory without its marker.
    shutil.copytree(root / "2", root / "3.orbax-checkpoint-tmp-1234567")
    (root / "3.orbax-checkpoint-tmp-1234567" / "commit_success.txt").unlink()
    shutil.copytree(root / "2", root / "4")
    (root / "4" / "commit_success.txt").unlink()
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="step 3 is incomplete: interrupted save"):
            ckpt.restore(3, target)
        with pytest.raises(CheckpointError, match="step 4 is incomplete: no commit_success.txt") as err:
            ckpt.restore(4, target)
        assert str(root / "4") in str(err.value)
        with pytest.raises(CheckpointError, match=r"no checkpoint for step 9; complete steps: \[2\]"):
            ckpt.restore(9, target)
        # Resuming falls back to the last complete step, and says so.
        with caplog.at_level(logging.WARNING, logger="jml_jax.checkpointing"):
            _, meta = ckpt.restore_or_none(target)
        assert meta["step"] == 2
        assert "ignoring incomplete checkpoints newer than step 2" in caplog.text
    # Only incomplete checkpoints: an error, not a silent fresh start.
    shutil.rmtree(root / "2")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="only incomplete checkpoints"):
            ckpt.restore_or_none(target)


def test_wrong_target_names_the_mismatched_keys(tmp_path):
    state = _state((1, 1, 1))
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state)
    target = _target((1, 1, 1))
    params = dict(target.params)
    params["up"] = dict(params["up"], kernel=jax.ShapeDtypeStruct((8, 32), jnp.float32, sharding=params["up"]["kernel"].sharding))
    params["extra"] = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=params["bn"]["scale"].sharding)}
    del params["frozen"]
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointStructureError) as err:
            ckpt.restore(1, target.replace(params=params))
    msg = str(err.value)
    assert "params/up/kernel target (8, 32) checkpoint (8, 16)" in msg
    assert "not in the checkpoint (1): params/extra/w" in msg
    assert "only in the checkpoint (2): params/frozen/bias, params/frozen/kernel" in msg
    assert err.value.path.endswith("checkpoints/1")


def test_save_and_restore_plain_params(tmp_path):
    state = _state((2, 2, 2))
    path = tmp_path / "converted"
    save_params(path, state.params)
    with pytest.raises(CheckpointError, match="already exists"):
        save_params(path, state.params)
    expected = jax.device_get(state.params)
    # As saved, onto one device.
    _assert_same(restore_params(path), expected)
    # Into the shardings of another mesh.
    target = _target((1, 8, 1))
    restored = restore_params(path, target.params)
    _assert_same(restored, expected)
    assert restored["up"]["kernel"].sharding.spec == P("fsdp", "tensor")
    # A model that does not fit.
    wrong = dict(target.params, extra={"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(CheckpointStructureError, match="extra/w"):
        restore_params(path, wrong)
    with pytest.raises(CheckpointError, match="no parameter checkpoint"):
        restore_params(tmp_path / "missing")


def test_flipped_bytes_in_a_data_file_are_caught_on_restore(tmp_path):
    """A data file whose bytes changed after the save reads back as other finite
    values; the per-array checksums saved with the step catch it."""
    import pathlib

    state = {"w": jax.numpy.arange(4096, dtype=jax.numpy.float32).reshape(64, 64) / 7.0}
    with Checkpointer(tmp_path, keep=2) as ckpt:
        ckpt.save(1, state, force=True)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    with Checkpointer(tmp_path, keep=2, create=False) as ckpt:
        restored, _ = ckpt.restore(1, target)  # intact: restores
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state["w"]))
    files = [p for p in pathlib.Path(tmp_path / "checkpoints" / "1" / "state").rglob("*") if p.is_file()]
    data = max(files, key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 64):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))
    with Checkpointer(tmp_path, keep=2, create=False) as ckpt:
        with pytest.raises(CheckpointError, match="data files are damaged"):
            ckpt.restore(1, target)
