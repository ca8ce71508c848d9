"""Scalar metrics to TensorBoard event files (tensorboardX) and a JSON-lines log.

Event files go to ``<workdir>/tensorboard/`` through ``tensorboardX.SummaryWriter``
(pure Python, no TensorFlow). Every `write_scalars` call also appends one JSON
object to ``<workdir>/metrics.jsonl``, which scripts and tests read without any
TensorBoard code (`read_jsonl`). Only process 0 writes; elsewhere the writer
does nothing and tensorboardX is never imported.

tensorboardX is imported when a writing `MetricWriter` is made, so
``import jml_jax`` works without it; machines without a package index install
its wheel by hand (docs/gpu_machines.md).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

MISSING_TENSORBOARDX = (
    "writing TensorBoard event files needs the 'tensorboardX' package (pip install tensorboardX). "
    "On a machine without a package index, carry its wheel: run "
    "`pip download --no-deps tensorboardX -d wheels/` where pip works, copy wheels/ over and run "
    "`pip install --no-deps wheels/*.whl` there (docs/gpu_machines.md)"
)

# Distinguishes event files of writers made in one process within one second
# (tensorboardX names files by time and host only, and opens them with 'wb').
_WRITER_IDS = itertools.count()


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise ImportError(MISSING_TENSORBOARDX) from e
    return SummaryWriter


def _json_value(value: float) -> float | str:
    # JSON has no NaN/Infinity; keep them readable as strings.
    return value if math.isfinite(value) else str(value)


class MetricWriter:
    """Writes scalars to ``<workdir>/tensorboard/events.out.tfevents.*`` and ``<workdir>/metrics.jsonl``.

    Args:
      workdir: the run's directory (created if needed).
      enabled: whether this process writes; default ``jax.process_index() == 0``.

    Raises:
      ImportError saying how to install tensorboardX, when this process writes
      and the package is missing.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        if enabled is None:
            enabled = jax.process_index() == 0
        self.enabled = enabled
        self.workdir = os.fspath(workdir)
        self.logdir = os.path.join(self.workdir, "tensorboard")
        self.jsonl_path = os.path.join(self.workdir, "metrics.jsonl")
        self._tb = self._jsonl = None
        if not enabled:
            return
        summary_writer = _summary_writer_class()
        os.makedirs(self.logdir, exist_ok=True)
        self._tb = summary_writer(
            logdir=self.logdir,
            flush_secs=10,
            filename_suffix=f".{os.getpid()}.{next(_WRITER_IDS)}",
        )
        self._jsonl = open(self.jsonl_path, "a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Logs ``{tag: number}`` at ``step`` (NumPy/JAX scalars and bools are fine).

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
        for tag, value in values.items():
            self._tb.add_scalar(tag, value, global_step=int(step), walltime=now)
        record = {"step": int(step), "wall_time": now}
        record.update({tag: _json_value(v) for tag, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self.flush()

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._jsonl.close()
            self._tb = self._jsonl = None
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
