"""Resuming from damaged checkpoints: any damaged file falls back to the
previous intact step; a run whose checkpoints were all set aside never starts
afresh unless told to, however often it is rerun."""

import logging
import shutil

import pytest

from jml_jax.checkpointing import CheckpointError, Checkpointer, CheckpointStructureError
from test_checkpointing import _state, _target


def _two_steps(workdir):
    state = _state((1, 1, 1))
    with Checkpointer(workdir, async_save=False) as ckpt:
        ckpt.save(1, state, {"data_position": 1})
        ckpt.save(2, state, {"data_position": 2})
    return workdir / "checkpoints"


def _data_file(step_dir):
    return max((p for p in (step_dir / "state" / "d").iterdir()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damaged", ["state/_METADATA", "state/manifest.ocdbt", "metadata/metadata", "data"])
def test_a_deleted_file_in_the_latest_step_falls_back_to_the_previous_step(tmp_path, damaged, caplog):
    root = _two_steps(tmp_path)
    (_data_file(root / "2") if damaged == "data" else root / "2" / damaged).unlink()
    with Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING, logger="jml_jax.checkpointing"):
        _, meta = ckpt.restore_or_none(_target((1, 1, 1)))
    assert meta["step"] == 1 and meta["data_position"] == 1
    assert "resuming from step 1" in caplog.text and "step 2:" in caplog.text
    assert (tmp_path / "damaged_checkpoints" / "2").is_dir() and not (root / "2").exists()


def test_a_checkpoint_of_another_model_is_still_an_error_and_stays(tmp_path):
    root = _two_steps(tmp_path)
    target = _target((1, 1, 1))
    other = target.replace(params={k: v for k, v in target.params.items() if k != "frozen"})
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointStructureError, match="does not fit the target state"):
            ckpt.restore_or_none(other)
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]
    assert not (tmp_path / "damaged_checkpoints").exists()


def test_all_damaged_refuses_a_fresh_start_on_every_rerun_until_allowed(tmp_path):
    root = _two_steps(tmp_path)
    (tmp_path / "best" / "1").mkdir(parents=True)  # the old run's best model
    for step in ("1", "2"):
        (root / step / "state" / "_METADATA").unlink()
    target = _target((1, 1, 1))
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="no usable checkpoint: step 2: .*step 1: .*allow_fresh_start"):
            ckpt.restore_or_none(target)
    assert sorted(p.name for p in (tmp_path / "damaged_checkpoints").iterdir()) == ["1", "2"]
    for _ in range(2):  # the second and third rerun: still refused
        with Checkpointer(tmp_path) as ckpt:
            with pytest.raises(CheckpointError, match="set aside as damaged .*--allow_fresh_start"):
                ckpt.restore_or_none(target)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_or_none(target, allow_fresh_start=True) is None
    abandoned = tmp_path / "abandoned_run"
    assert sorted(p.name for p in abandoned.iterdir()) == ["1", "2", "best"]
    assert not (tmp_path / "best").exists() and not (tmp_path / "damaged_checkpoints").exists()
    # The new run's reruns need no flag.
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_or_none(target) is None


def test_an_interrupted_first_save_still_starts_afresh(tmp_path):
    root = _two_steps(tmp_path)
    shutil.rmtree(root / "1")
    (root / "2").rename(root / "2.orbax-checkpoint-tmp-1700000000")
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_or_none(_target((1, 1, 1))) is None
