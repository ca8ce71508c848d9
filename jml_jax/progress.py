"""The training progress bar (tqdm): step/total, smoothed loss, examples/s, ETA.

Only process 0 shows it. On a terminal it redraws in place a few times a
second; elsewhere (CI logs, files) at most once every ``NON_TTY_INTERVAL_S``
seconds, so logs are not flooded. The training loops may call `update` at
every step or only at some (e.g. the log steps, where the loss is fetched):
``update(step)`` moves the bar to ``step`` and ``update(step, loss=x)`` also
folds ``x`` into the shown loss.
"""

from __future__ import annotations

import sys
import time

import jax
from tqdm import tqdm

NON_TTY_INTERVAL_S = 10.0
BAR_FORMAT = "{percentage:3.0f}%|{bar:20}| step {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
LOSS_SMOOTHING = 0.9  # weight of the previous value in the shown loss


class Progress:
    """A tqdm bar over optimizer steps.

    Args:
      total: the last step of the run.
      start: the step the run starts (or resumes) from.
      unit_examples: examples per step (the global batch), for examples/s.
      stream: where to draw (default ``sys.stderr``).
      mininterval: seconds between redraws; default 0.1 on a terminal,
        ``NON_TTY_INTERVAL_S`` elsewhere.
    """

    def __init__(self, total: int, *, start: int = 0, unit_examples: int = 1, stream=None,
                 mininterval: float | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = jax.process_index() == 0
        self.unit_examples = unit_examples
        tty = getattr(self.stream, "isatty", lambda: False)()
        if mininterval is None:
            mininterval = 0.1 if tty else NON_TTY_INTERVAL_S
        self.bar = tqdm(
            total=total, initial=start, file=self.stream, disable=not self.enabled,
            mininterval=mininterval, unit="step", bar_format=BAR_FORMAT, dynamic_ncols=tty,
        )
        self.loss: float | None = None
        # The examples/s count starts at the first update, so that the first
        # step's compilation does not drag the rate down for the whole run.
        self._t_first: float | None = None
        self._step_first = start

    def update(self, step: int, *, loss: float | None = None) -> None:
        """Moves the bar to ``step``; ``loss`` (if given) updates the smoothed loss."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first, self._step_first = now, step
        if loss is not None:
            loss = float(loss)
            self.loss = loss if self.loss is None else LOSS_SMOOTHING * self.loss + (1 - LOSS_SMOOTHING) * loss
        parts = []
        if self.loss is not None:
            parts.append(f"loss={self.loss:.4f}")
        done, elapsed = step - self._step_first, now - self._t_first
        if done > 0 and elapsed > 0:
            parts.append(f"{done * self.unit_examples / elapsed:.1f} ex/s")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def note(self, message: str) -> None:
        """Prints ``message`` on its own line without breaking the bar."""
        if self.enabled:
            tqdm.write(message, file=self.stream)

    def close(self) -> None:
        self.bar.close()
