"""Data configuration: every field the data pipeline reads, with its default.

`default_data_config()` returns an `ml_collections.ConfigDict`. Fields whose
default is "nothing" (optional paths) are typed placeholders, so a
config locked by `config_flags.DEFINE_config_file(..., lock_config=True)` can
still be given a value on the command line (`--config.data.image_dir=...`).

Experiment configs usually take this dict as `config.data` and override a few
fields:

    data = default_data_config()
    data.name = 'twitter2015'
    data.train_file = '/data/twitter2015/train.json'
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from data_pipeline.reader_common import ON_ERROR_CHOICES
from jml_jax.facts import IMAGE_MEAN, IMAGE_STD

# Names the pipeline knows; each selects a reader/feature path and a TFDS
# builder config (data_pipeline/builders/).
DATASET_NAMES = ("sample", "twitter2015", "twitter2017", "trc")
CROP_MODES = ("fixed", "center", "random")
IMAGE_OUTPUTS = ("uint8", "float32")

# §1.4: the normalisation constants of the original code (not ImageNet's).
JML_MEAN, JML_STD = IMAGE_MEAN, IMAGE_STD  # one owner: jml_jax/facts.py


def default_data_config() -> ml_collections.ConfigDict:
    """Every data field with its default.

    Returns:
      ConfigDict with the fields documented inline below.
    """
    c = ml_collections.ConfigDict()

    # --- what to read -------------------------------------------------------
    # 'sample' | 'twitter2015' | 'twitter2017' (joint MATE+MASC data) or 'trc'
    # (text-image relation pre-training data, §2.3).
    c.name = "sample"
    # Annotation format given to data_pipeline.readers.read_examples:
    # 'auto' detects it from the file.
    c.format = "auto"
    # A malformed annotation record: 'raise' (stop, naming file:line) or
    # 'skip' (leave it out with a warning naming file:line; counted per split
    # as 'records_skipped' in the run's data_counts.json).
    c.on_error = "raise"
    # Annotation files per split. For 'trc', train_file is the whole TRC set
    # and 'train'/'test' are the seeded 80/20 split below unless test_file is
    # given (then each split reads its own file).
    c.train_file = config_dict.placeholder(str)
    c.dev_file = config_dict.placeholder(str)
    c.test_file = config_dict.placeholder(str)
    # Folder of images named by each example's image_id. None = text-only run
    # (no 'image' key in batches).
    c.image_dir = config_dict.placeholder(str)
    # WordPiece vocabulary (bert-base-uncased vocab.txt for the paper's model).
    c.vocab_file = config_dict.placeholder(str)

    # --- text features (§1.3) -----------------------------------------------
    c.max_seq_length = 96  # L: [CLS] + 94 WordPieces + [SEP], padded with 0.
    c.max_spans = 20  # M: gold-aspect slots per sentence (= n_best_size).

    # --- images (§1.4) --------------------------------------------------------
    c.resize_wh = (600, 400)  # (W, H) of the straight resize before the crop.
    c.crop_size = 224
    # 'fixed': one seeded random crop + horizontal flip per image id, the same
    #   in every epoch, process and split (the original's cached crop, §1.4,
    #   §10.7). 'center': centre crop, no flip. 'random': a fresh crop + flip
    #   per (epoch, example) in training, true augmentation; eval uses the
    #   centre crop.
    c.crop_mode = "fixed"
    c.crop_seed = 42  # Seed of the 'fixed' and 'random' crops.
    c.mean = JML_MEAN
    c.std = JML_STD
    # TRC images are resized straight to this square size, no crop (§2.3).
    c.relation_resize = 224
    # Image used in place of a missing or unreadable one: a path, absolute or
    # relative to image_dir (the original used '17_06_4705.jpg' from the same
    # folder, §1.4). None = an all-zero image. Either way 'image_ok' is 0.
    c.fallback_image = config_dict.placeholder(str)
    # What batches carry under 'image': 'uint8' [b, 224, 224, 3] (4x fewer
    # bytes to the device; the model normalises with mean/std there) or
    # 'float32' already normalised on the host.
    c.image_output = "uint8"

    # --- storage --------------------------------------------------------------
    # TFDS data_dir for prepared builds (tokenized features + preprocessed
    # crops). None = prepare everything in memory, no TFDS.
    c.prepared_dir = config_dict.placeholder(str)

    # --- iteration --------------------------------------------------------------
    c.shuffle_seed = 0  # Epoch permutations are a function of (seed, epoch).
    c.prefetch = 2  # Batches assembled ahead in a background thread; 0 = none.

    # --- TRC split (§2.3: sklearn train_test_split(test_size=0.2,
    # random_state=1234)) ---------------------------------------------------------
    c.trc_test_fraction = 0.2
    c.trc_split_seed = 1234
    # The TRC CSV (data.format 'trc_csv', or a '.csv' train_file): False cuts
    # each tweet before its last 'https:' as the original does (§2.3, §10.13);
    # True keeps the whole tweet.
    c.trc_full_text = False
    # TRC text length as the relation module sees it in stage one. False
    # (default): padded to max_seq_length (96), unmasked, the length the joint
    # model feeds it (§2.5), so training and use see the same padding. True:
    # as the original's TRC loader, each batch padded to its longest tweet and
    # the padding unmasked (§2.3, §10.6); P(image adds) depends on it. Exact,
    # without a new shape per batch: the module's means and attention keys
    # cover each batch's first max-length positions (jml_jax/models/relation.py
    # `batch_max_positions`). Batches are of batch_size rows, as the original's.
    c.trc_pad_to_batch_max = False
    return c


def validate_data_config(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field when a value is not allowed."""
    if c.name not in DATASET_NAMES:
        raise ValueError(f"data.name={c.name!r} is not one of {DATASET_NAMES}")
    if c.get("on_error", "raise") not in ON_ERROR_CHOICES:
        raise ValueError(f"data.on_error={c.on_error!r} is not one of {ON_ERROR_CHOICES}")
    if c.crop_mode not in CROP_MODES:
        raise ValueError(f"data.crop_mode={c.crop_mode!r} is not one of {CROP_MODES}")
    if c.image_output not in IMAGE_OUTPUTS:
        raise ValueError(f"data.image_output={c.image_output!r} is not one of {IMAGE_OUTPUTS}")
    w, h = c.resize_wh
    if c.crop_size > min(w, h):
        raise ValueError(f"data.crop_size={c.crop_size} does not fit data.resize_wh={tuple(c.resize_wh)}")
    if len(c.mean) != 3 or len(c.std) != 3:
        raise ValueError("data.mean and data.std need 3 values (R, G, B)")
    if c.prefetch < 0:
        raise ValueError(f"data.prefetch={c.prefetch} must be >= 0")
