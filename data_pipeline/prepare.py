"""One split prepared in host memory: read, featurized, images decoded.

Both `pipeline.load_split` (which prefers a TFDS build) and the TFDS builders
(data_pipeline/builders/, which store what this prepares) import this module;
neither imports the other's module for it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from data_pipeline import images as images_lib
from data_pipeline.config import validate_data_config

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedSplit:
    """One split, fully in host memory.

    Attributes:
      split: 'train' | 'dev' | 'test'.
      kind: 'absa' (MATE+MASC features) or 'relation' (TRC).
      arrays: feature arrays, each [N, ...] int32 (see data_pipeline.features).
      examples: the N kept canonical examples, row-aligned with arrays.
      features: the FeatureSet (absa; host metadata for decoding and
        metrics), None for TRC.
      image_ids: [N] image file name of each example.
      images: [U, h, w, 3] uint8 distinct images (224x224 crops, or the
        resized sources in 'random' crop mode), None when off.
      image_index: [N] int32 row of `images` per example.
      image_ok: [N] int32, 1 where the example's real image was used.
      image_report: what happened to the images (None when off).
      crop: 'fixed' | 'center' | 'random' | 'none' (how `images` are stored).
      crop_size: side of the crop taken at batch time in 'random' mode.
      source: 'memory' or 'tfds'.
      records_skipped: malformed annotation records left out
        (data.on_error='skip'); for TRC's seeded split, those of the whole file.
    """

    split: str
    kind: str
    arrays: dict[str, np.ndarray]
    examples: list
    features: Any
    image_ids: list[str]
    images: np.ndarray | None = None
    image_index: np.ndarray | None = None
    image_ok: np.ndarray | None = None
    image_report: images_lib.ImageReport | None = None
    crop: str = "none"
    crop_size: int = 224
    source: str = "memory"
    records_skipped: int = 0

    @property
    def num_examples(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    @property
    def data_counts(self) -> dict:
        """What the data preparation replaced or cut, as plain ints (to save with a run).

        records_skipped: malformed annotation records left out
          (data.on_error='skip').
        image_fallbacks: distinct images replaced by the fallback (or zeros)
          because they were missing (images_missing) or unreadable
          (images_unreadable); examples_with_image_fallback: rows using one.
          All 0 when the image stream is off (images_used False).
        gold_aspects_truncated: gold aspects lying past the max_seq_length
          truncation, left out of the targets (§13);
          sentences_with_truncated_aspects: sentences losing at least one;
          sentences_dropped_no_gold: training sentences left out because no
          gold aspect survived (truncation or pieceless words);
          sentences_kept_without_gold_targets: evaluation sentences in the
          same case, kept so their gold aspects score as misses. Joint (absa)
          splits only.
        """
        report = self.image_report
        counts = {
            "split": self.split,
            "examples": self.num_examples,
            "records_skipped": self.records_skipped,
            "images_used": report is not None,
            "image_fallbacks": report.num_replaced if report else 0,
            "images_missing": len(report.missing_ids) if report else 0,
            "images_unreadable": len(report.corrupt_ids) if report else 0,
            "examples_with_image_fallback": int((self.image_ok == 0).sum()) if report else 0,
        }
        if self.kind == "absa" and self.features is not None:
            stats = self.features.stats
            counts.update(
                gold_aspects_truncated=int(stats["dropped_spans_truncated"]),
                sentences_with_truncated_aspects=int(stats["sentences_with_spans_truncated"]),
                sentences_dropped_no_gold=int(stats["dropped_all_spans_lost"]),
                sentences_kept_without_gold_targets=int(stats.get("kept_without_gold_targets", 0)),
            )
        return counts


# --------------------------------------------------------------------------- loading


def _split_file(data_config, split: str) -> str:
    key = f"{split}_file"
    if key not in data_config:
        raise ValueError(f"unknown split {split!r}: expected 'train', 'dev' or 'test'")
    path = data_config[key]
    if path is None:
        raise ValueError(f"data.{key} is not set, so split {split!r} cannot be loaded")
    return path


def _read(data_config, split: str, file_split: str):
    """The `ReadResult` of data.<file_split>_file (malformed records raise or
    are skipped by data.on_error); errors also name the field and split."""
    from data_pipeline import readers

    path = _split_file(data_config, file_split)
    fmt, kwargs = data_config.format, {}
    if data_config.name == "trc":
        if fmt == "auto":  # TRC JSON cannot be told from its suffix; the CSV by its header.
            fmt = "auto" if str(path).lower().endswith(".csv") else "trc"
        if fmt == "trc_csv" or (fmt == "auto" and readers.detect_format(path) == "trc_csv"):
            kwargs["full_text"] = bool(data_config.trc_full_text)
    try:
        return readers.read_examples(path, format=fmt, on_error=data_config.get("on_error", "raise"), **kwargs)
    except readers.DataFormatError as e:
        raise readers.DataFormatError(f"data.{file_split}_file (split {split!r}): {e}") from None


def read_split_examples(data_config, split: str) -> list:
    """Canonical examples of one split (never empty: an empty file is refused).

    TRC (§2.3): without data.test_file, 'train' and 'test' are the seeded
    80/20 split of data.train_file (readers.split_trc, sklearn's algorithm).
    """
    return _read_split(data_config, split)[0]


def _read_split(data_config, split: str) -> tuple[list, int]:
    """(`read_split_examples`, the number of malformed records skipped)."""
    from data_pipeline import readers

    if data_config.name == "trc" and data_config.test_file is None:
        if split not in ("train", "test"):
            raise ValueError(f"TRC has splits 'train' and 'test' (seeded split of data.train_file), not {split!r}")
        result = _read(data_config, split, "train")
        train, test = readers.split_trc(list(result), data_config.trc_test_fraction, data_config.trc_split_seed)
        return (train if split == "train" else test), result.num_skipped
    result = _read(data_config, split, split)
    return list(result), result.num_skipped


def text_features(data_config, split: str):
    """(kind, arrays, kept examples, FeatureSet or None, records skipped) for one split."""
    from data_pipeline import features as features_lib
    from data_pipeline import tokenizer as tokenizer_lib

    if data_config.vocab_file is None:
        raise ValueError("data.vocab_file is not set")
    examples, skipped = _read_split(data_config, split)
    tok = tokenizer_lib.load_tokenizer(data_config.vocab_file)
    if data_config.name == "trc":
        arrays = features_lib.convert_relation_examples(examples, tok, data_config.max_seq_length)
        kept = [examples[int(i)] for i in arrays["example_index"]]
        return "relation", dict(arrays), kept, None, skipped
    fc = features_lib.FeatureConfig(max_seq_length=data_config.max_seq_length, max_spans=data_config.max_spans)
    # Evaluation splits keep sentences whose gold aspects were all cut by the
    # truncation, so those aspects count as misses (recall is not inflated).
    fs = features_lib.convert_examples(examples, tok, fc, keep_all=split != "train")
    if not len(fs):
        where = "data.train_file" if data_config.name == "trc" else f"data.{split}_file"
        raise ValueError(f"split {split!r} ({where}={data_config[where[5:]]}) has no usable sentence: all "
                         f"{len(examples)} were dropped ({ {k: v for k, v in fs.stats.items() if v} })")
    return "absa", dict(fs.arrays), list(fs.examples), fs, skipped


def prepare_in_memory(data_config, split: str) -> PreparedSplit:
    """Reads, tokenizes and preprocesses the images of one split, no TFDS."""
    validate_data_config(data_config)
    kind, arrays, kept, fs, skipped = text_features(data_config, split)
    ids = [e.image_id for e in kept]
    prepared = PreparedSplit(split, kind, arrays, kept, fs, ids, image_ok=np.zeros(len(ids), np.int32),
                             records_skipped=skipped)
    attach_images(data_config, prepared)
    return prepared


def attach_images(data_config, prepared: PreparedSplit) -> None:
    """Fills the image fields from the image folder, or leaves them off (text-only)."""
    ids = prepared.image_ids
    if data_config.image_dir is None:
        logger.info("image stream off: text-only run (%s %s)", data_config.name, prepared.split)
        return
    settings = images_lib.ImageSettings.from_config(data_config, relation=prepared.kind == "relation")
    distinct = list(dict.fromkeys(ids))
    row_of = {image_id: u for u, image_id in enumerate(distinct)}
    images, ok, report = images_lib.preprocess_images(
        data_config.image_dir, distinct, settings, data_config.fallback_image
    )
    prepared.images, prepared.image_report = images, report
    prepared.image_index = np.array([row_of[i] for i in ids], np.int32)
    prepared.image_ok = ok[prepared.image_index].astype(np.int32)
    prepared.crop, prepared.crop_size = settings.crop, settings.crop_size
