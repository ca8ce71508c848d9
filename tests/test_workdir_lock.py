"""jml_jax/workdir_lock.py: one live run per workdir; stale locks are taken over."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from jml_jax import workdir_lock
from jml_jax.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLockedError

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOLDER = """
import sys
sys.path.insert(0, sys.argv[2])
from jml_jax.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run (killed with -9 by the test, or at the end)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run"), str(ROOT)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _write_lock(workdir: pathlib.Path, age: float = 0.0, **record):
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    path.write_text(json.dumps(record))
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_a_second_run_is_refused_naming_the_holders_host_and_pid(tmp_path, holder):
    with pytest.raises(WorkdirLockedError) as err:
        WorkdirLock(tmp_path / "run").acquire()
    message = str(err.value)
    assert f"host {socket.gethostname()} pid {holder.pid}" in message and "in use by another run" in message
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == holder.pid


def test_launch_train_refuses_a_locked_workdir_before_reading_data(tmp_path, holder, monkeypatch):
    from helpers import small_demo
    from launch import common
    from launch import train as launch_train

    monkeypatch.setattr(common, "train_data", lambda config: pytest.fail("data loaded despite the lock"))
    with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid}"):
        launch_train.run(small_demo.small_demo_config(images=False), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "command.txt").exists()


def test_the_lock_of_a_killed_process_on_this_host_is_taken_over(tmp_path, holder, caplog):
    holder.kill()  # kill -9: no chance to remove its lock
    holder.wait()
    assert (tmp_path / "run" / LOCK_FILE).exists()
    with caplog.at_level(logging.WARNING, logger="jml_jax.workdir_lock"):
        with WorkdirLock(tmp_path / "run"):
            record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
            assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert f"pid {holder.pid} no longer runs" in caplog.text
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released on leaving


def test_another_hosts_lock_is_stale_only_without_a_recent_heartbeat(tmp_path, caplog):
    workdir = tmp_path / "run"
    _write_lock(workdir, age=30, host="node-17", pid=4242, started="2026-01-01T00:00:00Z")
    with pytest.raises(WorkdirLockedError, match=r"host node-17 pid 4242 .*last heartbeat 30 s ago"):
        WorkdirLock(workdir, stale_seconds=600).acquire()
    _write_lock(workdir, age=700, host="node-17", pid=4242)
    with caplog.at_level(logging.WARNING, logger="jml_jax.workdir_lock"):
        with WorkdirLock(workdir, stale_seconds=600):
            assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "no heartbeat from node-17" in caplog.text


def test_a_reused_pid_does_not_keep_a_lock(tmp_path):
    # Our parent process is alive, but started at another time than recorded.
    workdir = tmp_path / "run"
    _write_lock(workdir, host=socket.gethostname(), pid=os.getppid(), pid_start="1")
    if workdir_lock._process_start(os.getppid()) in (None, "1"):
        pytest.skip("no /proc start times here")
    with WorkdirLock(workdir):
        pass


def test_the_heartbeat_refreshes_the_lock_and_the_lock_is_reentrant(tmp_path):
    workdir = tmp_path / "run"
    with WorkdirLock(workdir, heartbeat_seconds=0.05):
        path = workdir / LOCK_FILE
        os.utime(path, (0, 0))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5
        with WorkdirLock(workdir):  # train_and_evaluate inside launch.train's lock
            pass
        assert path.exists()
    assert not path.exists()
