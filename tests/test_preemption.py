"""jml_jax/preemption.py: SIGTERM/SIGINT stop a run at a step every process agrees on.

The watch alone (single process: a signal flag; several processes: JAX's
preemption sync point, stood in for here), and, marked slow, the real command:
``python -m launch.train`` gets SIGTERM mid-training, exits with status 75
after saving the step in flight, and the same command then ends bit-identical
to an uninterrupted run.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jml_jax import preemption
from jml_jax.preemption import PREEMPTED_EXIT_CODE, PreemptionWatch

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_one_process_stops_at_the_next_step_and_a_second_signal_goes_through(signum):
    seen = []
    previous = signal.signal(signum, lambda s, f: seen.append(s))
    try:
        with PreemptionWatch() as watch:
            assert not watch.should_stop(1)
            os.kill(os.getpid(), signum)
            assert watch.should_stop(2) and watch.signal_name == signal.Signals(signum).name
            assert seen == []  # the first signal is the watch's
            os.kill(os.getpid(), signum)  # a second one takes the previous way (here: recorded)
            assert seen == [signum]
        assert signal.getsignal(signum) is not None
        with PreemptionWatch() as watch:  # a new run is not stopped by the old signal
            assert not watch.should_stop(1)
    finally:
        signal.signal(signum, previous)


def test_several_processes_follow_jax_preemption_sync_point(monkeypatch):
    from jax.experimental import multihost_utils

    monkeypatch.setattr(preemption, "_distributed", lambda: True)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 5)
    forwarded = []
    previous_term = signal.signal(signal.SIGTERM, lambda s, f: forwarded.append(s))
    try:
        term_handler = signal.getsignal(signal.SIGTERM)
        with PreemptionWatch() as watch:
            assert signal.getsignal(signal.SIGTERM) is term_handler  # JAX's notifier keeps SIGTERM
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C on one host becomes the notice JAX spreads
            assert forwarded == [signal.SIGTERM]
            assert [step for step in range(1, 8) if watch.should_stop(step)] == [5]
    finally:
        signal.signal(signal.SIGTERM, previous_term)


def _command(workdir, cache):
    return [sys.executable, "-m", "launch.train", "--config=configs/demo.py:text_only",
            f"--workdir={workdir}", f"--compilation_cache={cache}", "--config.data.max_seq_length=32",
            "--config.max_steps=40", "--config.checkpoint_every_steps=1000", "--config.log_every_steps=1"]


def _run(workdir, cache, *, sigterm_after_step=None):
    """Runs the command; with ``sigterm_after_step``, sends SIGTERM once that
    step's loss is in metrics.jsonl. Returns (exit status, output)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.Popen(_command(workdir, cache), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if sigterm_after_step is not None:
        metrics = pathlib.Path(workdir) / "metrics.jsonl"
        while proc.poll() is None:
            if metrics.exists() and sum('"train/loss"' in line for line in metrics.read_text().splitlines()) \
                    >= sigterm_after_step:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
    out, _ = proc.communicate(timeout=900)
    return proc.returncode, out


def _final_state(workdir):
    import orbax.checkpoint as ocp

    step_dir = max((p for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()),
                   key=lambda p: int(p.name))
    with ocp.StandardCheckpointer() as ckptr:
        return int(step_dir.name), ckptr.restore(step_dir / "state")


@pytest.mark.slow
def test_sigterm_to_launch_train_then_the_same_command_ends_bit_identical(tmp_path):
    import jax

    from jml_jax.summary import read_jsonl

    cache = tmp_path / "xla_cache"
    rc, out = _run(tmp_path / "full", cache)
    assert rc == 0, out[-3000:]
    rc, out = _run(tmp_path / "run", cache, sigterm_after_step=2)
    assert rc == PREEMPTED_EXIT_CODE, out[-3000:]
    logged = sorted(r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r)
    saved, _ = _final_state(tmp_path / "run")
    assert 2 <= saved < 40 and logged == list(range(1, saved + 1))  # the step in flight was saved
    assert f"SIGTERM: saved step {saved} of 40" in out and "exit status 75" in out
    assert not (tmp_path / "run" / "lock.json").exists()
    rc, out = _run(tmp_path / "run", cache)
    assert rc == 0, out[-3000:]
    assert f"resumed from step {saved}" in out
    (step_a, full), (step_b, resumed) = _final_state(tmp_path / "full"), _final_state(tmp_path / "run")
    assert step_a == step_b == 40
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(full)[0], jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    losses = [{r["step"]: r["train/loss"] for r in read_jsonl(tmp_path / d / "metrics.jsonl") if "train/loss" in r}
              for d in ("full", "run")]
    assert losses[0] == losses[1]
