"""Demo: the full JML model, tiny and randomly initialised, on the bundled sample data.

Trains, evaluates and checkpoints on a 2-core CPU in a few minutes:

    python -m launch.train --config=configs/demo.py --workdir=workdirs/demo
    python -m launch.evaluate --config=configs/demo.py --workdir=workdirs/demo --split=test

Variants through the config argument: ``configs/demo.py:text_only``.
"""

from __future__ import annotations

import pathlib

from configs.common import base_config

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "sample"


def get_config(arg: str | None = None):
    c = base_config()
    c.model.bert = "tiny"
    vocab = SAMPLE / "vocab.txt"
    c.model.bert_vocab_size = sum(1 for _ in vocab.open(encoding="utf-8")) if vocab.exists() else 100
    c.model.resnet_depth = 50
    c.model.resnet_blocks = (1, 1, 1, 1)
    c.model.resnet_width = 8
    c.data.name = "sample"
    c.data.train_file = str(SAMPLE / "train.json")
    c.data.dev_file = str(SAMPLE / "dev.json")
    c.data.test_file = str(SAMPLE / "test.json")
    c.data.image_dir = str(SAMPLE / "images")
    c.data.vocab_file = str(SAMPLE / "vocab.txt")
    c.data.max_seq_length = 48
    c.batch_size = 8
    c.eval_batch_size = 8
    c.optimizer.grad_accum_steps = 1
    c.optimizer.learning_rate = 1e-3
    c.num_epochs = 12
    c.eval_per_epoch = 1
    c.eval_start_fraction = 0.0
    c.checkpoint_every_steps = 40
    c.log_every_steps = 5
    c.seed = 0
    if arg == "text_only":
        c.model.use_images = False
        c.data.image_dir = None
    elif arg:
        raise ValueError(f"unknown demo variant {arg!r}; valid: 'text_only'")
    return c
