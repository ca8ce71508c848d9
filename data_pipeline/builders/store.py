"""Build, find and load a TFDS build of the prepared data.

Picks the builder for a data config (`jml_absa` or `trc`), builds it once into
data.prepared_dir (or checks and reuses a matching build) and loads a split
back as a PreparedSplit. The shared specification (build parameters, stored
feature layout) is `common`, which the builders import; this module imports
the builders, so nothing here is imported back by them.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from data_pipeline import prepare
from data_pipeline.builders.common import (
    PreparedDataMismatchError,
    build_params,
    builder_config_name,
    check_params,
    is_relation,
)

logger = logging.getLogger(__name__)


def make_builder(data_config):
    """The builder object for data_config (its data_dir is data.prepared_dir)."""
    if data_config.prepared_dir is None:
        raise ValueError("data.prepared_dir is not set")
    from data_pipeline.images import import_tf

    import_tf()  # hide GPUs from TensorFlow before TFDS touches it
    if is_relation(data_config):
        from data_pipeline.builders.trc.trc import JmlTrc as cls
    else:
        from data_pipeline.builders.jml_absa.jml_absa import JmlAbsa as cls
    return cls(data_config=data_config, data_dir=data_config.prepared_dir, config=builder_config_name(data_config))


def is_built(data_config) -> bool:
    builder = make_builder(data_config)
    return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))


def build(data_config) -> str:
    """Builds (or checks and reuses) the prepared data; returns its folder."""
    import tensorflow_datasets as tfds

    builder = make_builder(data_config)
    if is_built(data_config):
        check_params(builder.info.metadata.get("build_params", {}), build_params(data_config), builder.data_dir)
        logger.info("reusing the prepared data in %s", builder.data_dir)
        return builder.data_dir
    builder.download_and_prepare(
        download_dir=os.path.join(data_config.prepared_dir, "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    logger.info("prepared data written to %s", builder.data_dir)
    return builder.data_dir


def load_prepared(data_config, split: str):
    """PreparedSplit of one split from its TFDS build (images decoded once, here).

    The text features are also converted in memory (cheap): they give the host
    metadata (FeatureSet) and must equal the stored arrays, which catches a
    build made by an older feature conversion.
    """
    from data_pipeline.images import ImageReport

    builder = make_builder(data_config)
    where = builder.data_dir
    check_params(builder.info.metadata.get("build_params", {}), build_params(data_config), where)
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} is not in the prepared data in {where} (has {sorted(builder.info.splits)})")
    columns: dict[str, list] = {}
    for batch in builder.as_dataset(split=split, shuffle_files=False).batch(256).as_numpy_iterator():
        for k, v in batch.items():
            columns.setdefault(k, []).append(v)
    stored = {k: np.concatenate(v) for k, v in columns.items()}
    order = np.argsort(stored.pop("row"), kind="stable")
    stored = {k: v[order] for k, v in stored.items()}

    kind, arrays, kept, fs, skipped = prepare.text_features(data_config, split)
    ids = [e.example_id for e in kept]
    if [b.decode() for b in stored["example_id"]] != ids:
        raise PreparedDataMismatchError(
            f"{where} [{split}]: stored example ids differ from the annotations read now; rebuild"
        )
    for k, v in arrays.items():
        if not np.array_equal(stored[k], v):
            raise PreparedDataMismatchError(
                f"{where} [{split}]: stored '{k}' differs from the current feature conversion; rebuild"
            )
    prepared = prepare.PreparedSplit(
        split, kind, {k: stored[k] for k in arrays}, kept, fs,
        [b.decode() for b in stored["image_id"]], image_ok=stored["image_ok"].astype(np.int32), source="tfds",
        records_skipped=skipped,
    )
    if "image" in stored:
        from data_pipeline.images import ImageSettings

        settings = ImageSettings.from_config(data_config, relation=is_relation(data_config))
        prepared.images = stored["image"]
        prepared.image_index = np.arange(prepared.num_examples, dtype=np.int32)
        prepared.crop, prepared.crop_size = settings.crop, settings.crop_size
        report = builder.info.metadata.get(f"image_report_{split}")
        prepared.image_report = ImageReport.from_json(report) if report else None
        if prepared.image_report is not None:
            prepared.image_report.log()
    else:
        prepare.attach_images(data_config, prepared)  # text-only
    return prepared
