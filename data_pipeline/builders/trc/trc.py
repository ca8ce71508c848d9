"""TFDS builder `jml_trc`: the TRC text-image relation set (§2.3).

Built from the local TRC JSON (data.train_file) and image folder; 'train' and
'test' are the seeded 80/20 split of the original (sklearn's algorithm,
random_state 1234). Each example: input_ids/input_mask/segment_ids [L],
labels [2] = [text_is_represented, image_adds], ids, 'image_ok' and, in
'trc_resize', the image resized straight to 224x224 (no crop, no flip) as
lossless PNG. 'trc_text' stores no pixels.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

from data_pipeline.builders.local_builder import LocalFilesBuilder


class JmlTrc(LocalFilesBuilder):
    """Text-image relation pairs for pre-training JML's relation gate."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First layout (build format 1)."}
    # TFDS 4.9.10 finds a builder's folder through `importlib_resources`, which
    # it installs only for Python < 3.9; naming the file directly avoids that.
    code_path = epath.Path(__file__)
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="trc_resize", description="TRC with 224x224 straight-resized images"),
        tfds.core.BuilderConfig(name="trc_text", description="TRC text features only"),
    ]
    NO_FILES_MESSAGE = "data.train_file (the TRC JSON) is not set"
