"""Scalar metrics to TensorBoard event files and a JSON-lines log, without TensorFlow.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecords (a little-endian
uint64 length, its masked CRC-32C, the payload, the payload's masked CRC-32C)
whose payloads are ``Event`` protocol buffers. The few fields needed for
scalars are encoded by hand here, so neither TensorFlow nor tensorboardX (absent
on the GPU machines) is needed:

    Event   { double wall_time = 1; int64 step = 2;
              oneof { string file_version = 3; Summary summary = 5; } }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

Every scalar write also goes to ``<workdir>/metrics.jsonl`` (one JSON object per
`write_scalars` call), which scripts and tests read without any TensorBoard
code. Only process 0 writes; elsewhere the writer does nothing.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from typing import Any, Iterator, Mapping

import jax
import numpy as np

FILE_VERSION = "brain.Event:2"

# ---------------------------------------------------------------------------
# CRC-32C (Castagnoli), as TFRecord framing requires.


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (``crc32c(b"123456789") == 0xE3069283``)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, payload, masked CRC of the payload."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + payload
        + struct.pack("<I", masked_crc32c(payload))
    )


# ---------------------------------------------------------------------------
# Protocol-buffer encoding of the fields used.


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
    """An ``Event`` payload carrying either the file version or scalar values."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _bytes_field(5, summary)
    return out


# ---------------------------------------------------------------------------
# Reading back (for tests and small analysis scripts).


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_event(payload: bytes) -> dict[str, Any]:
    """``{'wall_time', 'step', 'file_version'?, 'scalars'?}`` from an Event payload."""
    event: dict[str, Any] = {"wall_time": 0.0, "step": 0}
    for field, _, value in _fields(payload):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            scalars = event.setdefault("scalars", {})
            for vfield, _, vbytes in _fields(value):
                if vfield != 1:
                    continue
                tag, simple = None, None
                for f, _, v in _fields(vbytes):
                    if f == 1:
                        tag = v.decode()
                    elif f == 2:
                        simple = struct.unpack("<f", v)[0]
                if tag is not None and simple is not None:
                    scalars[tag] = simple
    return event


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every event in an event file, checking the TFRecord CRCs.

    Raises:
      ValueError naming the file and byte offset of a corrupt record.
    """
    data = open(path, "rb").read()
    events, pos = [], 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if length_crc != masked_crc32c(header):
            raise ValueError(f"{path}: bad length checksum at byte {pos}")
        payload = data[pos + 12:pos + 12 + length]
        if len(payload) != length or pos + 16 + length > len(data):
            raise ValueError(f"{path}: truncated record at byte {pos}")
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if payload_crc != masked_crc32c(payload):
            raise ValueError(f"{path}: bad payload checksum at byte {pos}")
        events.append(decode_event(payload))
        pos += 16 + length
    return events


# ---------------------------------------------------------------------------
# The writer.


def _json_value(value: float) -> float | str:
    # JSON has no NaN/Infinity; keep them readable as strings.
    return value if math.isfinite(value) else str(value)


class MetricWriter:
    """Writes scalars to ``<workdir>/tensorboard/events.out.tfevents.*`` and ``<workdir>/metrics.jsonl``.

    Args:
      workdir: the run's directory (created if needed).
      enabled: whether this process writes; default ``jax.process_index() == 0``.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        if enabled is None:
            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.workdir = os.fspath(workdir)
        self.event_path = None
        self.jsonl_path = os.path.join(self.workdir, "metrics.jsonl")
        self._events = self._jsonl = None
        if not enabled:
            return
        logdir = os.path.join(self.workdir, "tensorboard")
        os.makedirs(logdir, exist_ok=True)
        now = time.time()
        self.event_path = os.path.join(
            logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.v2"
        )
        self._events = open(self.event_path, "ab")
        self._events.write(tfrecord(encode_event(now, 0, file_version=FILE_VERSION)))
        self._jsonl = open(self.jsonl_path, "a")
        self.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Logs ``{tag: number}`` at ``step`` (NumPy/JAX scalars are fine).

        Raises:
          ValueError naming the tag of a value that is not a single number.
        """
        if not self.enabled:
            return
        values = {}
        for tag, value in scalars.items():
            arr = np.asarray(value)
            if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise ValueError(f"metric {tag!r} at step {step} is not a single number: {value!r}")
            values[str(tag)] = float(arr.reshape(()))
        now = time.time()
        self._events.write(tfrecord(encode_event(now, int(step), scalars=values)))
        record = {"step": int(step), "wall_time": now}
        record.update({tag: _json_value(v) for tag, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self.flush()

    def flush(self) -> None:
        if self.enabled:
            self._events.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled and self._events is not None:
            self._events.close()
            self._jsonl.close()
            self._events = self._jsonl = None
            self.enabled = False

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, with ``"nan"``/``"inf"`` strings as floats."""
    out = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            out.append({k: float(v) if v in ("nan", "inf", "-inf") else v for k, v in record.items()})
    return out
