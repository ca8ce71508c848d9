"""The training progress bar: step count, smoothed loss, examples/s, notes, quiet logs, process 0 only."""

import io
import re

import jax

from jml_jax import progress as progress_lib
from jml_jax.progress import Progress


def _draws(text):
    """The bar states drawn, in order (tqdm separates redraws with carriage returns)."""
    return [d for d in re.split(r"[\r\n]", text) if "step " in d and "|" in d]


def test_bar_shows_steps_loss_rate_and_notes():
    out = io.StringIO()
    bar = Progress(20, start=0, unit_examples=4, stream=out, mininterval=0)
    bar.update(1)  # before any loss: the bar moves, no loss is shown
    assert "1/20" in _draws(out.getvalue())[-1] and "loss=" not in out.getvalue()
    bar.update(2, loss=2.0)
    bar.update(6)  # the loss is fetched only at some steps
    assert "6/20" in _draws(out.getvalue())[-1] and "loss=2.0000" in _draws(out.getvalue())[-1]
    bar.update(10, loss=1.0)
    last = _draws(out.getvalue())[-1]
    assert "10/20" in last and " 50%" in last
    assert "loss=1.9000" in last  # 0.9 * 2.0 + 0.1 * 1.0
    assert re.search(r"\d+\.\d ex/s", last)
    bar.note("step 10: dev joint_orig/f1=0.5000 (best 0.5000 @ 10)")
    bar.update(20, loss=1.0)
    bar.close()
    text = out.getvalue()
    assert "step 10: dev joint_orig/f1=0.5000 (best 0.5000 @ 10)\n" in text.split("\r")
    assert "20/20" in _draws(text)[-1] and "100%" in _draws(text)[-1]


def test_resumed_run_starts_at_its_step():
    out = io.StringIO()
    bar = Progress(100, start=40, unit_examples=8, stream=out, mininterval=0)
    assert "40/100" in _draws(out.getvalue())[0]
    bar.update(50, loss=0.5)
    bar.close()
    assert "50/100" in _draws(out.getvalue())[-1]


def test_non_tty_output_does_not_flood():
    out = io.StringIO()  # not a terminal: redraws at most every NON_TTY_INTERVAL_S seconds
    bar = Progress(1000, stream=out)
    for step in range(1, 1001):
        bar.update(step, loss=1.0)
    bar.note("done")
    bar.close()
    draws = _draws(out.getvalue())
    assert len(draws) <= 4, draws  # the first and last draw, and the redraw after the note
    assert "1000/1000" in draws[-1]
    assert progress_lib.NON_TTY_INTERVAL_S >= 5


def test_only_process_zero_shows_it(monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    out = io.StringIO()
    bar = Progress(10, stream=out, mininterval=0)
    bar.update(5, loss=1.0)
    bar.note("hello")
    bar.close()
    assert out.getvalue() == ""
