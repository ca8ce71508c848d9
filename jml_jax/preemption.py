"""Stop cleanly on SIGTERM / SIGINT: save the current step, then exit with `PREEMPTED_EXIT_CODE`.

A preempted TPU or GPU VM gets SIGTERM some seconds before it is stopped;
SLURM sends it before killing a job (``--signal``, time limit, ``scancel``).
The training loop asks `PreemptionWatch.should_stop(step)` after every step;
when it says yes, the loop saves that step (after any in-flight asynchronous
save has finished), logs it and raises `Preempted`, which launch.train turns
into exit status `PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: "try again").
Rerunning the same command resumes from that step with nothing lost.

Who decides the step:

* several processes (``jax.distributed`` initialised): JAX's preemption sync
  service, `jax.experimental.multihost_utils.reached_preemption_sync_point`.
  Its notifier catches SIGTERM on any host, tells the coordinator, and every
  process gets True at the same step (one past the furthest any had reached),
  so all save that step together. SIGINT (Ctrl-C on one host) is turned into
  the same notice by re-sending SIGTERM to this process. No Python handler is
  installed for SIGTERM then: it would replace JAX's.
* one process without ``jax.distributed``: that API always answers False (it
  has no coordinator), and what it reduces to is a flag set by a signal
  handler, checked at the next step.

A second signal while the save is under way is not caught: the default
action (termination for SIGTERM, KeyboardInterrupt for SIGINT) happens, so a
stuck run can still be stopped. The handlers are installed on entering the
``with`` block and the previous ones put back on leaving it (entering the
same watch again inside is a no-op, so launch.train's watch, taken before
the data is loaded, is the one the training loop asks).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import threading

log = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): a temporary failure; the same command resumes.
PREEMPTED_EXIT_CODE = 75
# Written into the workdir (process 0) when a run stopped on a signal, removed
# when the next run starts: a scheduler script can tell a preempted run from a
# failed one even when it sees another exit status (srun reports 128+9 when it
# kills the other tasks of a step after the first one exited with 75).
MARKER_FILE = "preempted.json"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a preemption signal after saving ``step``."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, step: int, signal_name: str | None, workdir):
        self.step, self.signal_name, self.workdir = step, signal_name, workdir
        super().__init__(f"stopped by {signal_name or 'a preemption notice'} after saving step {step} in "
                         f"{workdir}; rerun the same command to resume")


def mark_preempted(workdir, step: int, signal_name: str | None) -> None:
    """Waits until every process has saved (multi-process), then writes
    ``<workdir>/preempted.json`` (process 0)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jml_preempted_{step}")  # nobody exits before all saved
    if jax.process_index() == 0:
        record = {"step": int(step), "signal": signal_name, "exit_status": PREEMPTED_EXIT_CODE}
        (pathlib.Path(workdir) / MARKER_FILE).write_text(json.dumps(record) + "\n")


def clear_preempted(workdir) -> None:
    """Removes the marker of an earlier preempted process (process 0)."""
    import jax

    if jax.process_index() == 0:
        (pathlib.Path(workdir) / MARKER_FILE).unlink(missing_ok=True)


def _distributed() -> bool:
    import jax

    return jax.distributed.is_initialized()


class PreemptionWatch:
    """Context manager: catches SIGTERM/SIGINT and says at which step to stop."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._multi = False
        self._depth = 0  # entered again by the training loop inside launch.train's block

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        # A second signal takes the default way out.
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        if self.signal_name is None:
            self.signal_name = name
            log.warning("%s received: the run will save the current step and stop", name)
        if self._multi and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier spreads it to every process

    def __enter__(self) -> "PreemptionWatch":
        self._depth += 1
        if self._depth > 1:
            return self
        self._multi = _distributed()
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM/SIGINT will not save before stopping")
            return self
        for signum in _SIGNALS:
            if self._multi and signum == signal.SIGTERM:
                continue  # JAX's preemption notifier owns SIGTERM
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """Whether to save ``step`` and stop; call it after every step, on
        every process (the sync point of a multi-process run needs that)."""
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:
                # The service is off (jax_enable_preemption_service=False): the
                # processes cannot agree on a step, so none stops early.
                return False
        return self.signal_name is not None
