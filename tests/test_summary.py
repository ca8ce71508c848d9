"""MetricWriter: TensorBoard's own reader reads the scalars back, and the JSON-lines log holds them."""

import json
import math
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jml_jax.summary import MetricWriter, read_jsonl


def _write(workdir):
    with MetricWriter(workdir, enabled=True) as writer:
        writer.write_scalars(1, {"train/loss": np.float32(2.5), "train/lr": 1e-3})
        writer.write_scalars(2, {"train/loss": 1.25, "dev/joint_orig/f1": np.array(0.5)})
        writer.write_scalars(3, {"train/loss": float("nan"), "ok": True})
        with pytest.raises(ValueError, match="'vec' at step 4 is not a single number"):
            writer.write_scalars(4, {"vec": np.ones(3)})
        with pytest.raises(ValueError, match="'name' at step 4 is not a single number"):
            writer.write_scalars(4, {"name": "abc"})
    return writer


def _scalars(logdir):
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_reads_the_scalars(tmp_path):
    _write(tmp_path)
    got = _scalars(tmp_path / "tensorboard")
    assert sorted(got) == ["dev/joint_orig/f1", "ok", "train/loss", "train/lr"]
    assert got["train/loss"][:2] == [(1, 2.5), (2, 1.25)]
    assert got["train/loss"][2][0] == 3 and math.isnan(got["train/loss"][2][1])
    assert got["train/lr"] == [(1, pytest.approx(1e-3))]
    assert got["dev/joint_orig/f1"] == [(2, 0.5)]
    assert got["ok"] == [(3, 1.0)]


def test_jsonl_log(tmp_path):
    _write(tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # one object per write_scalars call; the rejected ones wrote nothing
    raw = [json.loads(line) for line in lines]
    assert [sorted(r) for r in raw] == [
        ["step", "train/loss", "train/lr", "wall_time"],
        ["dev/joint_orig/f1", "step", "train/loss", "wall_time"],
        ["ok", "step", "train/loss", "wall_time"],
    ]
    assert raw[2]["train/loss"] == "nan"  # JSON has no NaN
    assert raw[0]["wall_time"] <= raw[1]["wall_time"] <= raw[2]["wall_time"]
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["train/loss"] == 2.5 and records[0]["train/lr"] == 1e-3
    assert records[1]["dev/joint_orig/f1"] == 0.5
    assert math.isnan(records[2]["train/loss"]) and records[2]["ok"] == 1.0


def test_a_resumed_run_appends(tmp_path):
    """A second writer on the same workdir (a restart) keeps the earlier scalars and log lines."""
    _write(tmp_path)
    with MetricWriter(tmp_path, enabled=True) as writer:
        writer.write_scalars(5, {"train/loss": 0.75})
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2
    assert [s for s in _scalars(tmp_path / "tensorboard")["train/loss"] if s[0] != 3] == [
        (1, 2.5), (2, 1.25), (5, 0.75)]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 5]


def test_disabled_writer_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # and never needs tensorboardX
    with MetricWriter(tmp_path / "w", enabled=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    assert not (tmp_path / "w").exists()


def test_missing_tensorboardx_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # what `import` sees when it is absent
    with pytest.raises(ImportError, match=r"'tensorboardX'.*pip download --no-deps tensorboardX -d wheels/"
                       r".*pip install --no-deps wheels/\*\.whl"):
        MetricWriter(tmp_path / "w", enabled=True)
    assert not (tmp_path / "w").exists()
