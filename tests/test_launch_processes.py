"""launch/common.py init_processes: when jax.distributed.initialize() is called.

Cloud TPU VM pods set none of the variables SLURM or GKE set, so the launcher
is told by JML_MULTIHOST=1 (launch/tpu_pod.sh); JML_MULTIHOST=0 forces a
single process.
"""

from __future__ import annotations

import jax
import pytest

from launch import common

CLUSTER_VARS = ("JML_MULTIHOST", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def calls(monkeypatch):
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    seen = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
    return seen


@pytest.mark.parametrize("env, expected", [
    ({}, []),
    ({"JML_MULTIHOST": "1"}, [{}]),  # TPU VM pod: JAX asks the metadata server
    ({"SLURM_NTASKS": "8"}, [{}]),
    ({"SLURM_NTASKS": "1"}, []),
    ({"SLURM_NTASKS": "8", "JML_MULTIHOST": "0"}, []),
    ({"TPU_WORKER_HOSTNAMES": "h0,h1"}, [{}]),
    ({"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     [{"coordinator_address": "h0:1234", "num_processes": 2, "process_id": 1}]),
])
def test_initialize_only_when_launched_as_several_processes(calls, monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    common.init_processes()
    assert calls == expected


def test_bad_multihost_value_is_an_error(calls, monkeypatch):
    monkeypatch.setenv("JML_MULTIHOST", "yes")
    with pytest.raises(ValueError, match="JML_MULTIHOST='yes'"):
        common.init_processes()
    assert calls == []
