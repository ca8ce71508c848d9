"""TFDS builders that prepare JML data from local folders (no download).

    from data_pipeline import builders
    builders.build(data_config)                 # once: writes data.prepared_dir
    split = builders.load_prepared(data_config, 'train')

`pipeline.load_split` uses a build automatically when data.prepared_dir holds
one. Each build stores the tokenized features and the preprocessed uint8
images (224x224 crops, or 224x224 resizes for TRC), so training never decodes
JPEGs; its vocab, sequence length and image settings are checked on load.
"""

from data_pipeline.builders.common import (  # noqa: F401
    PreparedDataMismatchError,
    build_params,
    builder_config_name,
    configured_splits,
)
from data_pipeline.builders.store import build, is_built, load_prepared, make_builder  # noqa: F401
