"""Prediction inputs: JSON lines of raw sentences -> a prepared split.

`launch.predict` reads its ``--input`` here and prepares it as the evaluation
data of the config would be; `jml_jax.predict` then restores a run and
decodes. The formats (input and output) are documented in jml_jax/predict.py.

    inputs = read_inputs("in.jsonl")                      # PredictInput per line
    inputs, prepared = prepare_inputs(config, inputs)     # + WordPiece features, crops

Every error names the input's ``file:line``; so does the log line of a text
whose WordPieces are cut at ``data.max_seq_length``, and the returned inputs
say which were (``PredictInput.truncated``, written to each output record).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)


class PredictInputError(ValueError):
    """A bad input line; the message starts with ``file:line:``."""


@dataclasses.dataclass(frozen=True)
class PredictInput:
    """One input sentence: words, optional image reference, where it came from."""

    words: tuple[str, ...]
    image: str | None
    record_id: Any
    where: str  # 'file:line'
    truncated: bool = False  # set by `prepare_inputs`: WordPieces past max_seq_length - 2 were cut


def read_inputs(path: str | pathlib.Path) -> list[PredictInput]:
    """Parses the JSON-lines input; raises PredictInputError naming file:line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictInputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            out.append(_parse_record(record, where))
    if not out:
        raise PredictInputError(f"{path}: no input sentences")
    return out


def _parse_record(record: Any, where: str) -> PredictInput:
    if not isinstance(record, dict):
        raise PredictInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - {"text", "words", "image", "id"})
    if unknown:
        raise PredictInputError(f"{where}: unknown field(s) {unknown}; allowed: text, words, image, id")
    if ("text" in record) == ("words" in record):
        raise PredictInputError(f"{where}: give exactly one of 'text' (a string) or 'words' (a list of strings)")
    if "text" in record:
        if not isinstance(record["text"], str):
            raise PredictInputError(f"{where}: 'text' must be a string")
        words = tuple(record["text"].split())
    else:
        words = record["words"]
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise PredictInputError(f"{where}: 'words' must be a list of non-empty strings")
        words = tuple(words)
    if not words:
        raise PredictInputError(f"{where}: the sentence has no words")
    image = record.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise PredictInputError(f"{where}: 'image' must be a non-empty string (a file name or path)")
    return PredictInput(words, image, record.get("id"), where)


def prepare_inputs(config, inputs: Sequence[PredictInput], image_dir: str | None = None):
    """The inputs as a `PreparedSplit` named 'predict': WordPiece features
    (data_pipeline.features.convert_texts, each row named by its ``file:line``)
    and, when the model uses images, the evaluation crops of the config.

    Returns:
      ``(inputs, prepared)``: the inputs with ``truncated`` set where the text
      had more than ``data.max_seq_length - 2`` WordPieces, and the split.
    Raises PredictInputError (naming file:line) for a missing image reference
    or an image file that is absent or unreadable.
    """
    from data_pipeline import features as features_lib
    from data_pipeline import images as images_lib
    from data_pipeline import tokenizer as tokenizer_lib
    from data_pipeline.prepare import PreparedSplit

    data = config.data
    if data.vocab_file is None:
        raise ValueError("config.data.vocab_file is not set")
    tok = tokenizer_lib.load_tokenizer(data.vocab_file)
    fc = features_lib.FeatureConfig(max_seq_length=data.max_seq_length, max_spans=data.max_spans)
    fs = features_lib.convert_texts([inp.words for inp in inputs], tok, fc, ids=[inp.where for inp in inputs])
    keep = data.max_seq_length - 2
    inputs = [
        dataclasses.replace(inp, truncated=features_lib.num_wordpieces(tok, inp.words) > keep) for inp in inputs
    ]
    ids = [inp.image or "" for inp in inputs]
    prepared = PreparedSplit(
        "predict", "absa", dict(fs.arrays), list(fs.examples), fs, ids,
        image_ok=np.zeros(len(inputs), np.int32),
    )
    if config.model.use_images:
        _attach_images(data, prepared, inputs, image_dir if image_dir is not None else data.image_dir,
                       images_lib)
    elif any(inp.image for inp in inputs):
        log.info("the model is text-only: input images are ignored")
    return inputs, prepared


def _attach_images(data, prepared, inputs, image_dir, images_lib) -> None:
    missing = [inp.where for inp in inputs if not inp.image]
    if missing:
        raise PredictInputError(
            f"{missing[0]}: no 'image', but the model uses images "
            f"({len(missing)} line(s) without one; use a text-only config to predict from text alone)"
        )
    settings = images_lib.ImageSettings.from_config(data, relation=False)
    if settings.crop == "random":  # evaluation sees the centre window (data_pipeline.pipeline)
        settings = dataclasses.replace(settings, crop="center")
    distinct = list(dict.fromkeys(prepared.image_ids))
    # An absolute 'image' ignores image_dir (os.path.join); a relative one without
    # any image_dir is relative to the working directory.
    images, ok, report = images_lib.preprocess_images(image_dir or "", distinct, settings, fallback_image=None)
    bad = {image_id for image_id, good in zip(distinct, ok) if not good}
    if bad:
        first = next(inp for inp in inputs if inp.image in bad)
        raise PredictInputError(
            f"{first.where}: image {first.image!r} is missing or unreadable in "
            f"{image_dir or 'the working directory'} ({len(bad)} bad image(s): {sorted(bad)[:5]})"
        )
    row_of = {image_id: u for u, image_id in enumerate(distinct)}
    prepared.images, prepared.image_report = images, report
    prepared.image_index = np.array([row_of[i] for i in prepared.image_ids], np.int32)
    prepared.image_ok = np.ones(len(inputs), np.int32)
    prepared.crop, prepared.crop_size = settings.crop, settings.crop_size
