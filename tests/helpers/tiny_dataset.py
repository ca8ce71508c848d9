"""A tiny JMASA + TRC data set written into a temporary folder for pipeline tests.

Images come in several formats (JPEG, PNG, GIF, BMP), one file is corrupt and
one image id has no file, so the failure paths run on every test pass.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image

WORDS = ["the", "cat", "sat", "on", "mat", "food", "was", "great", "bad", "service", "nice", "view", "today"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
IMAGE_FILES = ["i0.jpg", "i1.png", "i2.gif", "i3.bmp", "i4.jpg", "i5.png"]
CORRUPT = "bad.jpg"
MISSING = "gone.jpg"
POLARITIES = ["POS", "NEU", "NEG"]


def _image(rng, h=60, w=90) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_images(folder: pathlib.Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Writes IMAGE_FILES plus a corrupt file; returns the written pixels per name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = {}
    for name in IMAGE_FILES:
        array = _image(rng)
        image = Image.fromarray(array)
        if name.endswith(".gif"):
            # Two frames; decoding must take the first. GIF is palette-based,
            # so keep the pixels as they read back.
            second = Image.fromarray(255 - array)
            image.save(folder / name, save_all=True, append_images=[second])
            array = np.asarray(Image.open(folder / name).convert("RGB"))
        else:
            image.save(folder / name, quality=95) if name.endswith(".jpg") else image.save(folder / name)
            if name.endswith(".jpg"):
                array = np.asarray(Image.open(folder / name).convert("RGB"))
        pixels[name] = array
    (folder / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return pixels


def _sentence(rng, image_id):
    n = int(rng.integers(3, 9))
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
    start = int(rng.integers(0, n - 1))
    end = start + 1
    aspects = [{"from": start, "to": end, "polarity": POLARITIES[int(rng.integers(0, 3))], "term": words[start:end]}]
    return {"words": words, "image_id": image_id, "aspects": aspects}


def write_tiny_dataset(root: pathlib.Path, num_train: int = 13, num_dev: int = 5, num_trc: int = 10) -> dict:
    """Writes train/dev JSON, a TRC JSON, a vocab and an image folder under root.

    Returns:
      dict of paths: train_file, dev_file, trc_file, vocab_file, image_dir.
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(1)
    ids = IMAGE_FILES + [CORRUPT, MISSING]
    splits = {}
    for split, n in (("train", num_train), ("dev", num_dev)):
        records = [_sentence(rng, ids[i % len(ids)]) for i in range(n)]
        splits[split] = root / f"{split}.json"
        splits[split].write_text(json.dumps(records))
    trc = []
    for i in range(num_trc):
        n = int(rng.integers(2, 7))
        trc.append({"words": [WORDS[j] for j in rng.integers(0, len(WORDS), n)],
                    "image_id": ids[i % len(ids)], "ifpairs": [int(rng.integers(0, 2)), int(rng.integers(0, 2))]})
    (root / "trc.json").write_text(json.dumps(trc))
    (root / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    write_images(root / "images")
    return {"train_file": str(splits["train"]), "dev_file": str(splits["dev"]), "trc_file": str(root / "trc.json"),
            "vocab_file": str(root / "vocab.txt"), "image_dir": str(root / "images")}


def data_config(paths: dict, **overrides):
    """default_data_config() pointed at the tiny data set."""
    from data_pipeline.config import default_data_config

    cfg = default_data_config()
    cfg.train_file, cfg.dev_file = paths["train_file"], paths["dev_file"]
    cfg.vocab_file, cfg.image_dir = paths["vocab_file"], paths["image_dir"]
    for k, v in overrides.items():
        cfg[k] = v
    return cfg
