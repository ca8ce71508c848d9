"""Demo: the full JML model, tiny and randomly initialised, on the bundled sample data.

Trains, evaluates and checkpoints on a 2-core CPU in a few minutes:

    python -m launch.train --config=configs/demo.py --workdir=workdirs/demo
    python -m launch.evaluate --config=configs/demo.py --workdir=workdirs/demo --split=test

Variants through the config argument (``--config=configs/demo.py:text_only``;
parsed by configs/args.py):

  text_only   no image stream (no ResNets, no relation module)
"""

from __future__ import annotations

import pathlib

from configs.args import config_name, parse_config_arg
from configs.common import base_config

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "sample"
FLAGS = ("text_only",)


def get_config(arg: str | None = None):
    flags = parse_config_arg(arg, config=config_name(__file__), flags=FLAGS).flags
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
    if "text_only" in flags:
        c.model.use_images = False
        c.data.image_dir = None
    return c
