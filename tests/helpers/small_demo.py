"""The demo config shrunk for the training-system tests (one place for its sizes)."""

from __future__ import annotations

TOTAL_STEPS = 4


def small_demo_config(*, images: bool):
    """The demo config: 7 steps per epoch (60 examples / 8), 4 steps, sequences of 32,
    a checkpoint every 2 steps and one evaluation per epoch (only at step 4)."""
    from configs import demo

    c = demo.get_config(None if images else "text_only")
    c.data.max_seq_length = 32
    c.batch_size = 8
    c.eval_batch_size = 8
    c.max_steps = TOTAL_STEPS
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.eval_per_epoch = 1
    return c
