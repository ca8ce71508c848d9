"""Unreadable checkpoint files: every converter names the file, and none advises
loading an untrusted pickle (`weights_only=False`)."""

import argparse

import numpy as np
import pytest

from jml_jax.convert import bert, original, resnet
from jml_jax.convert.common import CheckpointReadError

torch = pytest.importorskip("torch")

READERS = {
    "bert": bert.read_state_file,
    "resnet": lambda path: resnet.load_resnet_checkpoint(path),
    "original": original.load_original_state,
}


@pytest.fixture
def bad_files(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.ones((16, 16), np.float32)}, str(tmp_path / "whole.safetensors"))
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "pickled.pth")
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pth")
    good = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "truncated.npz").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    return tmp_path


_CASES = [(reader, name) for reader in sorted(READERS)
          for name in ("random.pth", "pickled.pth", "truncated.pth")]
_CASES += [("bert", "truncated.safetensors"), ("resnet", "truncated.safetensors"), ("original", "truncated.npz")]


@pytest.mark.parametrize("reader, name", _CASES)
def test_unreadable_checkpoints_name_the_file_and_never_suggest_unsafe_loading(bad_files, reader, name):
    path = bad_files / name
    with pytest.raises(CheckpointReadError) as info:
        READERS[reader](path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "weights_only" not in message and "arbitrary code" not in message


def test_a_readable_pth_still_loads(bad_files):
    state = bert.read_state_file(bad_files / "good.pth")
    np.testing.assert_array_equal(state["w"], [1.0, 1.0])
    assert original.load_original_state(bad_files / "good.pth")[0].keys() == {"w"}
