"""Cache of precomputed image features for a frozen image encoder.

Layout of a cache folder:
  features.npy   [num_images, 49, 2048] float16: the 7x7 grid of the last
                 ResNet stage, row-major regions (§1.4), one row per image.
  index.json     {"format": 1, "image_ids": [...], "shape": [...],
                  "dtype": "float16"}: row i of features.npy is image_ids[i].

The writer is pure NumPy so that the JAX code that runs the encoder (outside
data_pipeline/) only hands it arrays. Batches built from a cache carry
'image_features' [b, 49, 2048] float16 instead of 'image'.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

FEATURES_FILE = "features.npy"
INDEX_FILE = "index.json"
_FORMAT = 1


def write_feature_cache(path: str, image_ids: Sequence[str], features: np.ndarray) -> None:
    """Writes features [num_images, regions, dim] for image_ids into folder `path`.

    Raises:
      ValueError: ids not distinct, count mismatch, not a 3-D floating array,
        or non-finite values (which float16 overflow would also produce).
    """
    ids = [str(i) for i in image_ids]
    features = np.asarray(features)
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"feature cache image ids are not distinct: {dup[:10]}")
    if features.ndim != 3 or features.shape[0] != len(ids):
        raise ValueError(f"features must be [num_images={len(ids)}, regions, dim], got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"features must be floating point, got {features.dtype}")
    with np.errstate(over="ignore"):  # overflow is reported just below, by name
        half = features.astype(np.float16)
    if not np.isfinite(half).all():
        raise ValueError("features hold inf/nan after the cast to float16 (values beyond 65504?)")
    os.makedirs(path, exist_ok=True)
    # Write the array first: a cache with an index is complete.
    np.save(os.path.join(path, FEATURES_FILE), half)
    index = {"format": _FORMAT, "image_ids": ids, "shape": list(half.shape), "dtype": "float16"}
    with open(os.path.join(path, INDEX_FILE), "w") as f:
        json.dump(index, f)


@dataclasses.dataclass
class FeatureCache:
    """A loaded cache: features [num_images, regions, dim] float16 (memory-mapped)."""

    path: str
    image_ids: list[str]
    features: np.ndarray
    row_of: dict[str, int]

    @classmethod
    def load(cls, path: str) -> FeatureCache:
        index_path = os.path.join(path, INDEX_FILE)
        features_path = os.path.join(path, FEATURES_FILE)
        for p in (index_path, features_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"feature cache file missing: {p}")
        with open(index_path) as f:
            index = json.load(f)
        if index.get("format") != _FORMAT:
            raise ValueError(f"{index_path}: unknown feature cache format {index.get('format')!r}")
        features = np.load(features_path, mmap_mode="r")
        if list(features.shape) != index["shape"] or features.dtype != np.float16:
            raise ValueError(
                f"{features_path}: shape {features.shape} {features.dtype} does not match "
                f"{index_path}: {index['shape']} {index['dtype']}"
            )
        ids = list(index["image_ids"])
        return cls(path, ids, features, {i: r for r, i in enumerate(ids)})

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.row_of

    def rows(self, image_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of image_ids: (rows [n] int32, -1 where absent; found [n] bool)."""
        rows = np.array([self.row_of.get(i, -1) for i in image_ids], np.int32)
        return rows, rows >= 0

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """[n] rows (-1 = absent) -> [n, regions, dim] float16, zeros where absent."""
        rows = np.asarray(rows)
        out = np.asarray(self.features[np.maximum(rows, 0)])
        if (rows < 0).any():
            out = out.copy()
            out[rows < 0] = 0
        return out
