"""One live run per work directory: ``<workdir>/lock.json``.

Two training processes writing one workdir (a requeued job whose old copy
still runs, a reused folder) would interleave ``metrics.jsonl`` and overwrite
each other's checkpoints, ``best/`` and ``summary.json``. `WorkdirLock` makes
the second one stop at once, naming the holder::

    with WorkdirLock(workdir):      # raises WorkdirLockedError if held
        ...train...

The lock file is created atomically (``O_CREAT | O_EXCL``) and holds the
holder's ``host``, ``pid``, process start time and start date as JSON; a
daemon thread touches it every `HEARTBEAT_SECONDS` while the run lives.

A lock left behind by a process that is gone (kill -9, a lost node) is
**stale** and is taken over, with a warning naming the old holder:

* same host: the holder's pid no longer runs (or runs a different program
  start time, i.e. the pid was reused);
* another host: its heartbeat (the file's modification time) is older than
  `STALE_SECONDS` (10 minutes), as the pid cannot be checked from here.

So a requeue on the same node resumes at once; on another node after a hard
kill it waits out the heartbeat (the error says how long), or the lock file
is deleted by hand. A run that ends normally, fails or is preempted removes
its lock. Within one process the lock is reentrant (launch.train takes it
before loading data, `train_and_evaluate` takes it again).

In a multi-process run only process 0 holds the file; all processes learn its
outcome (`jax.experimental.multihost_utils.broadcast_one_to_all`) and all fail
together when it is held elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import threading
import time

log = logging.getLogger(__name__)

LOCK_FILE = "lock.json"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0

# Locks this process holds: resolved path -> [WorkdirLock, depth].
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


class WorkdirLockedError(RuntimeError):
    """Another live run holds the work directory; names its host and pid."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), which
    tells a reused pid from the original holder; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _stale_reason(holder: dict, age: float, stale_seconds: float) -> str | None:
    """Why the lock described by ``holder`` is stale, or None when it is live."""
    host, pid = holder.get("host"), holder.get("pid")
    if host == socket.gethostname() and isinstance(pid, int):
        if not _pid_alive(pid):
            return f"pid {pid} no longer runs on {host}"
        started = holder.get("pid_start")
        if started is not None and _process_start(pid) not in (None, started):
            return f"pid {pid} on {host} is now another process"
        return None
    if age > stale_seconds:
        return f"no heartbeat from {host} for {age:.0f} s (stale after {stale_seconds:.0f} s)"
    return None


class WorkdirLock:
    """The exclusive lock of one work directory (see the module docstring).

    Args:
      workdir: the run's directory (created if needed).
      heartbeat_seconds: how often the lock file's time is refreshed.
      stale_seconds: a lock of another host is stale after this long without a
        heartbeat.
      enabled: whether this process takes the file (default: process 0).
    """

    def __init__(self, workdir, *, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 stale_seconds: float = STALE_SECONDS, enabled: bool | None = None):
        self._workdir = os.fspath(workdir)
        self._remote = "://" in self._workdir  # gs://...: no O_EXCL there
        self.path = (pathlib.Path(self._workdir) if self._remote else pathlib.Path(workdir).resolve()) / LOCK_FILE
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self._enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict | None = None

    # -- the file -----------------------------------------------------------

    def _try_create(self) -> bool:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.write("\n")
        self._record = record
        return True

    def _read_holder(self) -> tuple[dict, float] | None:
        """(holder record, seconds since its heartbeat), or None when the file vanished."""
        try:
            age = time.time() - self.path.stat().st_mtime
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:  # cut short while being written
            holder = {}
        return (holder if isinstance(holder, dict) else {}), age

    def _acquire_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._try_create():
                return
            found = self._read_holder()
            if found is None:
                continue  # released meanwhile
            holder, age = found
            if not holder and age < self.stale_seconds:
                time.sleep(0.1)  # being written by its holder right now
                continue
            reason = _stale_reason(holder, age, self.stale_seconds) if holder else "unreadable lock file"
            if reason is None:
                wait = max(0.0, self.stale_seconds - age)
                raise WorkdirLockedError(
                    f"{self.path.parent} is in use by another run: host {holder.get('host')} pid "
                    f"{holder.get('pid')} (started {holder.get('started')}, last heartbeat {age:.0f} s ago). "
                    "Stop that run or use another --workdir; if it is gone (a lost node), the lock "
                    f"turns stale {wait:.0f} s from now, or delete {self.path}")
            # Take over: move the stale file aside atomically, so that of two
            # processes taking over at once only one succeeds.
            aside = self.path.with_name(f"{LOCK_FILE}.stale.{socket.gethostname()}.{os.getpid()}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            os.unlink(aside)
            log.warning("taking over the lock of %s from host %s pid %s: %s", self.path.parent,
                        holder.get("host"), holder.get("pid"), reason)
        raise WorkdirLockedError(f"could not take {self.path}: other processes keep taking it")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                os.utime(self.path)
            except OSError as err:  # the file was removed by hand: say so, keep training
                log.warning("cannot refresh the workdir lock %s: %s", self.path, err)

    def _release_file(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        found = self._read_holder()
        if found is not None and found[0].get("pid") == os.getpid() \
                and found[0].get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    # -- public ---------------------------------------------------------------

    def acquire(self) -> "WorkdirLock":
        key = str(self.path)
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key][1] += 1
                return self
        import jax

        if self._remote:
            log.warning("%s is object storage: no workdir lock there (one run per workdir is up to you)",
                        self._workdir)
            self._owns_file = False
            with _HELD_GUARD:
                _HELD[key] = [self, 1]
            return self

        enabled = jax.process_index() == 0 if self._enabled is None else self._enabled
        error = None
        if enabled:
            try:
                self._acquire_file()
            except WorkdirLockedError as err:
                error = err
        if jax.process_count() > 1:
            import numpy as np
            from jax.experimental import multihost_utils

            held_elsewhere = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
            if held_elsewhere and error is None:
                error = WorkdirLockedError(f"{self.path.parent} is in use by another run (process 0 could not "
                                           f"take {self.path}; its error names the holder)")
        if error is not None:
            raise error
        if enabled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._heartbeat, name="workdir-lock-heartbeat", daemon=True)
            self._thread.start()
        self._owns_file = enabled
        with _HELD_GUARD:
            _HELD[key] = [self, 1]
        return self

    def release(self) -> None:
        key = str(self.path)
        with _HELD_GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[key]
            owner = entry[0]
        if getattr(owner, "_owns_file", False):
            owner._release_file()

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
