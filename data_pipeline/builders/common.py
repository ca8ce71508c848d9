"""What the TFDS builders share: build parameters, feature specs, build/load.

A build is identified by its TFDS config name (`<dataset>_<crop mode>` or
`<dataset>_text`, e.g. 'twitter2015_fixed', 'trc_resize', 'sample_text') and
described by its *build parameters* (vocab hash, sequence length, span slots,
image settings, hashes of the annotation files), stored in the build's TFDS
metadata. Loading a build whose parameters differ from the current config
raises PreparedDataMismatchError naming every differing field: a model
trained on ids from another vocab would otherwise train silently on garbage.

This module imports no builder: the builders (`local_builder`, `jml_absa`,
`trc`) import it, and `store` (which picks, builds and loads a builder)
imports both, so the imports run one way.
"""

from __future__ import annotations

import copy

import numpy as np

from data_pipeline import prepare
from data_pipeline.reader_common import sha256_file

# Bump when the stored layout changes; old builds are then refused.
BUILD_FORMAT = 1

# Feature arrays stored per example: key -> shape in terms of (L, M).
ABSA_ARRAYS = {
    "input_ids": ("L",), "input_mask": ("L",), "segment_ids": ("L",),
    "start_positions": ("L",), "end_positions": ("L",), "token_to_word": ("L",),
    "span_starts": ("M",), "span_ends": ("M",), "polarity_labels": ("M",), "span_mask": ("M",),
    "num_tokens": (), "example_index": (),
}
RELATION_ARRAYS = {
    "input_ids": ("L",), "input_mask": ("L",), "segment_ids": ("L",), "labels": (2,), "example_index": (),
}


class PreparedDataMismatchError(ValueError):
    """A prepared build does not match the config (or the current code)."""




def is_relation(data_config) -> bool:
    return data_config.name == "trc"


def has_images(data_config) -> bool:
    """Builds store pixels only when an image folder is given."""
    return data_config.image_dir is not None


def builder_config_name(data_config) -> str:
    """TFDS config name of the build this data config reads or writes."""
    if not has_images(data_config):
        return f"{data_config.name}_text"
    return f"{data_config.name}_{'resize' if is_relation(data_config) else data_config.crop_mode}"


def configured_splits(data_config) -> list[str]:
    """Splits a build holds: TRC train/test (seeded split) or every *_file set."""
    if is_relation(data_config) and data_config.test_file is None:
        return ["train", "test"] if data_config.train_file is not None else []
    return [s for s in ("train", "dev", "test") if data_config[f"{s}_file"] is not None]


def build_params(data_config) -> dict:
    """Everything a build depends on, as plain JSON values."""
    c = data_config
    if c.vocab_file is None:
        raise ValueError("data.vocab_file is not set")
    params = {
        "build_format": BUILD_FORMAT,
        "name": c.name,
        "annotation_format": c.format,
        "vocab_sha256": sha256_file(c.vocab_file),
        "max_seq_length": int(c.max_seq_length),
        "files_sha256": {s: sha256_file(c[f"{s}_file"]) for s in ("train", "dev", "test") if c[f"{s}_file"]},
        "images": has_images(c),
    }
    if c.get("on_error", "raise") != "raise":  # absent for 'raise', so earlier builds stay valid
        params["on_error"] = c.on_error
    if is_relation(c):
        params["trc_split"] = [float(c.trc_test_fraction), int(c.trc_split_seed)]
        params["trc_full_text"] = bool(c.trc_full_text)
    else:
        params["max_spans"] = int(c.max_spans)
    if has_images(c):
        params["image_settings"] = {
            "crop": "resize" if is_relation(c) else c.crop_mode,
            "resize_wh": [int(c.relation_resize)] * 2 if is_relation(c) else [int(v) for v in c.resize_wh],
            "crop_size": int(c.crop_size),
            "crop_seed": int(c.crop_seed),
            "fallback_image": c.fallback_image,
        }
    return params


def check_params(stored: dict, expected: dict, where: str) -> None:
    """Raises PreparedDataMismatchError naming each differing build parameter."""
    keys = sorted(set(stored) | set(expected))
    diffs = [f"{k}: built with {stored.get(k)!r}, config wants {expected.get(k)!r}"
             for k in keys if stored.get(k) != expected.get(k)]
    if diffs:
        raise PreparedDataMismatchError(
            f"the prepared data in {where} was built with other settings; rebuild it into another "
            "data.prepared_dir (or delete that folder):\n  " + "\n  ".join(diffs)
        )


def features_dict(data_config):
    """tfds FeaturesDict of one stored example."""
    import tensorflow_datasets as tfds

    table = RELATION_ARRAYS if is_relation(data_config) else ABSA_ARRAYS
    sizes = {"L": int(data_config.max_seq_length), "M": int(data_config.max_spans)}
    spec = {
        k: tfds.features.Tensor(shape=tuple(sizes.get(d, d) for d in dims), dtype=np.int32)
        for k, dims in table.items()
    }
    spec.update(
        row=tfds.features.Scalar(dtype=np.int32, doc="row in the split; TFDS reorders examples"),
        example_id=tfds.features.Text(),
        image_id=tfds.features.Text(),
        image_ok=tfds.features.Scalar(dtype=np.int32),
    )
    if has_images(data_config):
        from data_pipeline.images import ImageSettings

        h, w = ImageSettings.from_config(data_config, relation=is_relation(data_config)).stored_hw
        # Lossless PNG: about half the bytes of raw uint8, decoded once at load.
        spec["image"] = tfds.features.Image(shape=(h, w, 3), encoding_format="png")
    return tfds.features.FeaturesDict(spec)


def generate_split(builder, data_config, split: str):
    """Yields (row, example) of one split, prepared by the in-memory path."""
    cfg = copy.deepcopy(data_config)
    with cfg.unlocked():
        cfg.prepared_dir = None
    prepared = prepare.prepare_in_memory(cfg, split)
    table = RELATION_ARRAYS if is_relation(cfg) else ABSA_ARRAYS
    unexpected = sorted(set(prepared.arrays) - set(table))
    missing = sorted(set(table) - set(prepared.arrays))
    if unexpected or missing:
        raise PreparedDataMismatchError(
            f"feature arrays do not match the stored layout: unexpected {unexpected}, missing {missing}; "
            "update data_pipeline/builders/common.py and BUILD_FORMAT"
        )
    if prepared.image_report is not None:
        builder.info.metadata[f"image_report_{split}"] = prepared.image_report.to_json()
    for row in range(prepared.num_examples):
        example = {k: prepared.arrays[k][row] for k in table}
        example.update(row=row, example_id=prepared.examples[row].example_id,
                       image_id=prepared.image_ids[row], image_ok=int(prepared.image_ok[row]))
        if prepared.images is not None:
            example["image"] = prepared.images[prepared.image_index[row]]
        yield row, example
