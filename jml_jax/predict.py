"""Prediction for raw sentences with a trained run: `predict(config, workdir, inputs)`.

The command line is ``python -m launch.predict --config=... --workdir=DIR
--input=IN.jsonl --output=OUT.jsonl [--image_dir=FOLDER] [--checkpoint=best]``.

Input: one JSON object per line (blank lines are skipped)::

    {"text": "RT @user : Great game by Messi tonight", "image": "123.jpg", "id": "any"}
    {"words": ["Great", "game", "by", "Messi"], "image": "/abs/path/123.jpg"}

``text`` is split on whitespace; ``words`` is taken as given. ``image`` is a
file name inside ``image_dir`` (default: the config's data.image_dir) or a
path; it is required when the model uses images and ignored when it is
text-only. ``id`` (optional) is copied to the output.

Output: one JSON object per input line, in order::

    {"id": ..., "words": [...], "image": ...,
     "aspects": [{"word_start": 3, "word_end": 3, "text": "Messi",
                  "polarity": "positive", "span_score": 17.2, "polarity_prob": 0.91,
                  "polarity_probs": {"other": ..., "neutral": ..., "positive": ..., "negative": ...}}],
     "p_text_represented": 0.7, "p_image_adds": 0.4}

``span_score`` is the span's start logit plus its end logit (what decoding
ranks by, §6); ``polarity_prob`` the softmax probability of the predicted
polarity. Spans are decoded exactly as in evaluation (jml_jax.evaluators:
extraction -> host decoding -> classification); images get the evaluation
preprocessing of the config's data section (its fixed crop, or the centre
crop for 'random'), so a sentence seen in training gets the same pixels.
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


def build_split(config, inputs: Sequence[PredictInput], image_dir: str | None = None):
    """The inputs as an `EvalSplit`: WordPiece features (data_pipeline.features.
    convert_texts) and, when the model uses images, preprocessed crops.

    Raises PredictInputError (naming file:line) for a missing image reference
    or an image file that is absent or unreadable.
    """
    import jax

    from data_pipeline import features as features_lib
    from data_pipeline import images as images_lib
    from data_pipeline import pipeline
    from data_pipeline import tokenizer as tokenizer_lib
    from jml_jax.evaluators import EvalSplit

    data = config.data
    if data.vocab_file is None:
        raise ValueError("config.data.vocab_file is not set")
    tok = tokenizer_lib.load_tokenizer(data.vocab_file)
    fc = features_lib.FeatureConfig(max_seq_length=data.max_seq_length, max_spans=data.max_spans)
    fs = features_lib.convert_texts([inp.words for inp in inputs], tok, fc)
    ids = [inp.image or "" for inp in inputs]
    prepared = pipeline.PreparedSplit(
        "predict", "absa", dict(fs.arrays), list(fs.examples), fs, ids,
        image_ok=np.zeros(len(inputs), np.int32),
    )
    if config.model.use_images:
        _attach_images(data, prepared, inputs, image_dir if image_dir is not None else data.image_dir,
                       images_lib)
    elif any(inp.image for inp in inputs):
        log.info("the model is text-only: input images are ignored")

    def make_iter():
        return pipeline.make_eval_iter(
            data, prepared, global_batch_size=config.eval_batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )

    return EvalSplit(name="predict", make_iter=make_iter, features=fs)


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


def restore_for_prediction(config, workdir, which: str | int = "best"):
    """(experiment, evaluator, state) of a run's checkpoint, restored into this
    machine's mesh (jml_jax.scoring.restore_for_eval). Batches of a split must
    pass through ``experiment.task.prepare_inputs`` before the evaluator reads them."""
    from jml_jax.scoring import restore_for_eval
    from jml_jax.tasks import task_class

    task = task_class(config)
    if not task.decodes_spans:
        raise ValueError("prediction decodes aspect spans: it needs a joint-model config, "
                         f"not the {task.name} task")
    exp, state = restore_for_eval(config, workdir, which)
    return exp, exp.make_evaluator(), state


def format_predictions(inputs: Sequence[PredictInput], split, pred: dict) -> list[dict]:
    """One output record per input (see the module docstring)."""
    from jml_jax.metrics import POLARITY_NAMES

    arrays = split.features.arrays
    records = []
    for r, inp in enumerate(inputs):
        t2w = arrays["token_to_word"][r]
        texts = pred["texts"][r]
        aspects = []
        for j in np.nonzero(pred["span_mask"][r])[0]:
            s, e = int(pred["span_starts"][r, j]), int(pred["span_ends"][r, j])
            ws, we = int(t2w[s]), int(t2w[e])
            pol = int(pred["polarity"][r, j])
            probs = pred["polarity_probs"][r, j]
            aspects.append({
                "word_start": ws, "word_end": we,
                "text": " ".join(inp.words[ws : we + 1]),
                "decoded_text": texts[len(aspects)] if len(aspects) < len(texts) else "",
                "polarity": POLARITY_NAMES[pol],
                "span_score": float(pred["span_scores"][r, j]),
                "polarity_prob": float(probs[pol]),
                "polarity_probs": {name: float(p) for name, p in zip(POLARITY_NAMES, probs)},
            })
        record: dict[str, Any] = {}
        if inp.record_id is not None:
            record["id"] = inp.record_id
        record["words"] = list(inp.words)
        if inp.image is not None:
            record["image"] = inp.image
        record["aspects"] = aspects
        if "relation_probs" in pred:
            record["p_text_represented"], record["p_image_adds"] = map(float, pred["relation_probs"][r])
        records.append(record)
    return records


def predict(config, workdir, inputs: Sequence[PredictInput], *, image_dir: str | None = None,
            which: str | int = "best") -> list[dict]:
    """Restores ``which`` checkpoint of ``workdir`` and predicts every input."""
    split = build_split(config, inputs, image_dir)
    exp, evaluator, state = restore_for_prediction(config, workdir, which)
    _, splits = exp.task.prepare_inputs(exp, None, {split.name: split}, workdir=workdir)
    pred = evaluator.predict_split(state, splits[split.name])
    return format_predictions(inputs, split, pred)


def write_jsonl(path: str | pathlib.Path, records: Sequence[dict]) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
