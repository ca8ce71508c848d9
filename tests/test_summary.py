"""TensorBoard event files written without TensorFlow are readable, and so is the JSON log."""

import glob
import math
import struct

import numpy as np
import pytest

from jml_jax.summary import (
    FILE_VERSION,
    MetricWriter,
    crc32c,
    decode_event,
    encode_event,
    read_events,
    read_jsonl,
)


def test_crc32c_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_event_encoding_round_trips():
    payload = encode_event(1.5, 2**40 + 3, scalars={"a/b": 0.25, "c": -3.0})
    event = decode_event(payload)
    assert event == {"wall_time": 1.5, "step": 2**40 + 3, "scalars": {"a/b": 0.25, "c": -3.0}}
    assert decode_event(encode_event(0.0, -1))["step"] == -1
    # Field 1 is the wall time as a little-endian double (tag byte 0x09).
    assert payload[:9] == b"\x09" + struct.pack("<d", 1.5)


def _write(tmp_path):
    with MetricWriter(tmp_path, enabled=True) as writer:
        writer.write_scalars(1, {"train/loss": np.float32(2.5), "train/lr": 1e-3})
        writer.write_scalars(2, {"train/loss": 1.25, "dev/joint_orig/f1": np.array(0.5)})
        writer.write_scalars(3, {"train/loss": float("nan"), "ok": True})
        with pytest.raises(ValueError, match="'vec' at step 4 is not a single number"):
            writer.write_scalars(4, {"vec": np.ones(3)})
    return writer


def test_event_file_reads_back(tmp_path):
    writer = _write(tmp_path)
    events = read_events(writer.event_path)
    assert events[0]["file_version"] == FILE_VERSION
    scalars = [(e["step"], e["scalars"]) for e in events[1:]]
    assert scalars[0] == (1, {"train/loss": 2.5, "train/lr": pytest.approx(1e-3)})
    assert scalars[1] == (2, {"train/loss": 1.25, "dev/joint_orig/f1": 0.5})
    assert scalars[2][0] == 3 and math.isnan(scalars[2][1]["train/loss"]) and scalars[2][1]["ok"] == 1.0
    assert len(events) == 4
    # A flipped byte is caught by the checksum.
    data = bytearray(open(writer.event_path, "rb").read())
    data[-6] ^= 0xFF
    corrupt = tmp_path / "corrupt.tfevents"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        read_events(corrupt)


def test_jsonl_log(tmp_path):
    _write(tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["train/loss"] == 2.5
    assert records[1]["dev/joint_orig/f1"] == 0.5
    assert math.isnan(records[2]["train/loss"])
    assert '"train/loss": "nan"' in (tmp_path / "metrics.jsonl").read_text()


def test_disabled_writer_writes_nothing(tmp_path):
    with MetricWriter(tmp_path / "w", enabled=False) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    assert not (tmp_path / "w").exists()


def test_tensorflow_reads_the_event_file(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed")
    writer = _write(tmp_path)
    events = list(tf.compat.v1.train.summary_iterator(writer.event_path))
    assert events[0].file_version == FILE_VERSION
    got = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events[1:]]
    assert got[0] == (1, {"train/loss": 2.5, "train/lr": pytest.approx(1e-3)})
    assert got[1] == (2, {"train/loss": 1.25, "dev/joint_orig/f1": 0.5})


def test_tensorboard_reads_the_event_file(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write(tmp_path)
    acc = EventAccumulator(glob.glob(str(tmp_path / "tensorboard"))[0])
    acc.Reload()
    assert [(s.step, s.value) for s in acc.Scalars("dev/joint_orig/f1")] == [(2, 0.5)]
