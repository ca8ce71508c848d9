"""The TFDS builder behaviour shared by `jml_absa` and `jml_trc`.

Both build from local files named by a data config (never a download): the
config travels with the builder object, the builder config name says what is
stored, and the build parameters go into the dataset metadata so that a build
made with another vocab, length or image setting is refused on load.
Imports TensorFlow Datasets, so only the builder modules import it.
"""

from __future__ import annotations

import sys

import tensorflow_datasets as tfds

from data_pipeline.builders import common


class LocalFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Subclasses set VERSION, RELEASE_NOTES, code_path, BUILDER_CONFIGS and NO_FILES_MESSAGE."""

    NO_FILES_MESSAGE = "no annotation file is set"

    def __init__(self, *, data_config, **kwargs):
        self._data_config = data_config
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=sys.modules[type(self).__module__].__doc__,
            features=common.features_dict(self._data_config),
            metadata=tfds.core.MetadataDict(build_params=common.build_params(self._data_config)),
            homepage="https://github.com/MANLP-suda/JML",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        splits = common.configured_splits(self._data_config)
        if not splits:
            raise ValueError(self.NO_FILES_MESSAGE)
        return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
        yield from common.generate_split(self, self._data_config, split)
