"""A one-line progress display for training: step, loss, examples/s, ETA.

No dependency (tqdm is not on every machine we run on). Redraws in place on a
terminal; elsewhere (CI logs, files) prints a line every ``every_seconds``.
Only process 0 prints.
"""

from __future__ import annotations

import sys
import time

import jax


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total: int, *, start: int = 0, unit_examples: int = 1, every_seconds: float = 10.0, stream=None):
        self.total = total
        self.start = start
        self.unit_examples = unit_examples
        self.every = every_seconds
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.enabled = jax.process_index() == 0
        self.t0 = time.time()
        self.t_first = None  # first step excludes compilation from the rate
        self.step_first = start
        self.last_print = 0.0
        self.loss_avg = None

    def update(self, step: int, *, loss: float) -> None:
        now = time.time()
        if self.t_first is None:
            self.t_first, self.step_first = now, step
        self.loss_avg = loss if self.loss_avg is None else 0.9 * self.loss_avg + 0.1 * loss
        if not self.enabled:
            return
        if self.tty or now - self.last_print >= self.every or step == self.total:
            self.last_print = now
            done = step - self.step_first
            rate = done / (now - self.t_first) if done and now > self.t_first else 0.0
            eta = (self.total - step) / rate if rate else float("nan")
            pct = 100.0 * step / max(1, self.total)
            line = (
                f"step {step}/{self.total} ({pct:5.1f}%) loss {self.loss_avg:.4f} "
                f"{rate * self.unit_examples:7.1f} ex/s ETA {_fmt_seconds(eta) if rate else '--:--'}"
            )
            if self.tty:
                self.stream.write("\r" + line.ljust(90))
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def note(self, message: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + message + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
