"""TFDS builder `jml_absa`: Twitter-2015, Twitter-2017 and the sample set.

Builds from local files named by a data config (data_pipeline/config.py);
nothing is downloaded:

    builder = JmlAbsa(data_config=cfg, data_dir=cfg.prepared_dir,
                      config=builder_config_name(cfg))   # e.g. 'twitter2015_fixed'
    builder.download_and_prepare()

Each example holds the WordPiece features of one sentence (§1.3: input_ids,
masks, span targets, token->word map; [L] or [M] int32), its ids, 'image_ok'
and, in image configs, the preprocessed image as lossless PNG: the fixed or
centre 224x224 crop, or the 600x400 resize for 'random' crops (§1.4). The
'_text' configs store no pixels.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

from data_pipeline.builders.local_builder import LocalFilesBuilder

_DATASETS = ("sample", "twitter2015", "twitter2017")
_VARIANTS = {
    "fixed": "one frozen seeded 224 crop + flip per image (the original's cached crop, §1.4)",
    "center": "centre 224 crop",
    "random": "600x400 resized source; the crop is drawn per epoch at batch time",
    "text": "text features only, no images",
}


class JmlAbsa(LocalFilesBuilder):
    """Joint aspect-term extraction + sentiment data, prepared for JML."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First layout (build format 1)."}
    # TFDS 4.9.10 finds a builder's folder through `importlib_resources`, which
    # it installs only for Python < 3.9; naming the file directly avoids that.
    code_path = epath.Path(__file__)
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=f"{d}_{v}", description=f"{d}: {text}")
        for d in _DATASETS
        for v, text in _VARIANTS.items()
    ]
    NO_FILES_MESSAGE = "no annotation file is set (data.train_file/dev_file/test_file)"
