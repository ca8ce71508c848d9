"""Several JAX processes on localhost, for the multi-process tests.

The launching test calls `start_workers` and `wait_for_workers`; each worker
script calls `initialize` first. Every worker gets 2 CPU devices, the repo and
tests/ on its path, and the same coordinator port.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(worker: pathlib.Path, args_of, num_processes: int = 2) -> list[subprocess.Popen]:
    """Starts ``python worker *args_of(process_id, num_processes, port)`` per process."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO_ROOT), str(REPO_ROOT / "tests"), env.get("PYTHONPATH")) if p
        ),
    )
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, str(worker), *map(str, args_of(i, num_processes, port))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(num_processes)
    ]


def wait_for_workers(procs, deadline: float, *, timeout_s: float, what: str, tail: int = 6000) -> None:
    """Waits until ``deadline`` (time.monotonic()); fails the test on a timeout or a non-zero exit."""
    import pytest

    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{what} did not finish within {timeout_s} s")
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"worker {i} failed (exit {p.returncode}):\n{out[-tail:]}"


def initialize(process_id: int, num_processes: int, port: int) -> None:
    """In a worker: jax.distributed over localhost with gloo CPU collectives."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    assert jax.process_count() == num_processes, jax.process_count()
